"""Templates follow their file: a worker picks up a changed file without a restart (a new
templates version in the read model) and keeps the old templates when the new file is bad;
``hfctl templates validate`` explains every problem."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.conftest import ROOT, Proc, wait_for

GPU = {"templateId": "gpu-xl", "maxNumber": -1,
       "attributes": {"type": "X86_64", "ncpus": 16, "nram": 65536, "ngpus": 1},
       "imageId": "ami-gpu", "vmType": "g5.4xlarge", "instanceTags": "team=ml"}


def templates_view(client: redis.Redis) -> dict[str, Any]:
    view: dict[str, Any] = json.loads(client.get("hf:v1:templates") or b"{}")
    return view


def hfctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hfctl", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_changed_file_is_followed_and_a_bad_one_refused(
        start_worker: Callable[..., Proc], templates_file: Path, rclient: redis.Redis,
        producer: Any, stack_env: dict[str, str]) -> None:
    worker = start_worker()
    first = templates_view(rclient)
    document = json.loads(templates_file.read_text())
    document["templates"].append(GPU)
    templates_file.write_text(json.dumps(document))
    newer = wait_for(lambda: (v := templates_view(rclient))["version"] > first["version"] and v,
                     10, what="the changed templates file to be loaded")
    [gpu] = [t for t in newer["templates"] if t["templateId"] == "gpu-xl"]
    assert gpu["attributes"]["ncpus"] == ["Numeric", "16"]  # flat values become pairs
    assert gpu["instanceTags"] == "team=ml" and gpu["maxNumber"] == -1

    document["templates"][0]["maxNumber"] = 99_999  # an administrator's mistake
    templates_file.write_text(json.dumps(document))
    wait_for(lambda: "template_refused" in worker.output(), 10,
             what="the worker to leave the bad template out")
    # The refusal is logged as the file is read, the view projected just after.
    served = wait_for(lambda: (v := templates_view(rclient))["version"] > newer["version"]
                      and v, 10, what="the templates without the bad one")
    assert [t["templateId"] for t in served["templates"]] == sorted(
        t["templateId"] for t in newer["templates"] if t["templateId"] != "x86-small")
    sent = producer.send_task("commands.create_request",
                              kwargs={"template_id": "gpu-xl", "max_number": 500},
                              queue="commands.requests")  # -1: no limit
    outcome = wait_for(lambda: rclient.get(f"hf:v1:command:{sent.id}"), 20, what="the outcome")
    assert json.loads(outcome)["outcome"] == "applied"

    # A file that is not JSON at all: refused whole, the templates loaded before stay, also
    # across a restart.
    templates_file.write_text('{"templates": [')
    wait_for(lambda: "templates_refused" in worker.output(), 10,
             what="the worker to refuse the broken file")
    assert templates_view(rclient) == served
    worker.stop()
    rclient.delete("hf:v1:templates")
    restarted = start_worker()
    assert templates_view(rclient) == served
    assert "templates_refused" in restarted.output()

    templates_file.write_text(json.dumps(document))
    checked = hfctl(stack_env, "templates", "validate", str(templates_file))
    assert checked.returncode == 1 and "3 template(s) usable" in checked.stdout
    assert "templates[0] (x86-small): maxNumber must be an integer from -1" in checked.stderr
    document["templates"][0]["maxNumber"] = 10
    templates_file.write_text(json.dumps(document))
    fixed = hfctl(stack_env, "templates", "validate", str(templates_file))
    assert fixed.returncode == 0 and "4 template(s), usable" in fixed.stdout
