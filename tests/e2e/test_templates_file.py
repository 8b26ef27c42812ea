"""An administrator's own templates file, as a real worker, the query service and the five
plugin scripts meet it: one bad template costs only itself (named in the log, by ``hfctl
templates validate`` and in a metric), ``null`` means absent, every key comes back, and a
fix in place is taken without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, free_port, wait_for, worker_argv
from tests.e2e.conftest import HostFactory

pytestmark = [pytest.mark.redis, pytest.mark.worker]
ATTRS = {"type": ["String", "X86_64"], "ncpus": ["Numeric", "2"], "nram": ["Numeric", "4096"]}
AWS = {"attributes": ATTRS, "imageId": "ami-0abc1234def567890", "subnetId": "subnet-0aa11bb2",
       "maxNumber": 20}
SIX = [
    {"templateId": "plain-a", "maxNumber": 5, "attributes": ATTRS},
    {**AWS, "templateId": "aws-typo", "vmType": "m5.large", "subnetID": "subnet-0aa11bb2"},
    {**AWS, "templateId": "aws-ok", "vmType": "m5.large"},
    {**AWS, "templateId": "aws-weight-zero", "priceType": "spot",
     "vmTypes": {"t3.small": 1, "t3.medium": 0}},
    {**AWS, "templateId": "aws-spot", "priceType": "spot",
     "vmTypes": {"t3.small": 1, "t3.medium": 2}},
    {"templateId": "plain-b", "maxNumber": -1, "attributes": ATTRS},
]


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hfctl", "templates", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def refused_metric(port: int) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("hf_worker_templates_refused "):
            return float(line.split()[1])
    return None


def offered(hostfactory: HostFactory) -> list[str]:
    return [t["templateId"] for t in hostfactory.ok("getAvailableTemplates", {})["templates"]]


@pytest.fixture
def worker_with(start_worker: Callable[..., Proc], stack_env: dict[str, str],
                tmp_path: Path) -> Any:
    """A worker; with ``{"wait": False}`` one whose templates file may give none (so the
    start is not waited for by its templates list)."""
    started: list[Proc] = []

    def start(options: dict[str, Any]) -> Proc:
        if options.get("wait", True):
            return start_worker()
        proc = Proc(worker_argv(1, "bare"), stack_env, tmp_path / "bare-worker.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_two_bad_templates_of_six_cost_only_themselves(
        templates_file: Path, start_worker: Callable[..., Proc], hostfactory: HostFactory,
        ) -> None:
    templates_file.write_text(json.dumps({"templates": SIX}))
    port = free_port()
    worker = start_worker(WORKER_METRICS_PORT=str(port))
    good = ["aws-ok", "aws-spot", "plain-a", "plain-b"]
    assert sorted(offered(hostfactory)) == good
    for template_id in good:
        rid: str = hostfactory.ok("requestMachines", {"template": {
            "templateId": template_id, "machineCount": 2}})["requestId"]

        def applied(rid: str = rid) -> bool:
            return bool(hostfactory.status(rid)[0]["message"] == "")

        wait_for(applied, 20, every_s=0.2, what=f"a request of {template_id} to be applied")
    code, refused = hostfactory.call("requestMachines", {"template": {
        "templateId": "aws-typo", "machineCount": 1}})
    assert code == 1 and "unknown template 'aws-typo'" in refused["message"]
    log = worker.output()
    assert "aws-typo" in log and "did you mean 'subnetId'" in log
    assert "aws-weight-zero" in log and "t3.medium: weight 0" in log
    checked = validate(templates_file)
    assert checked.returncode == 1
    assert "templates[1] (aws-typo): subnetID: not a field the AWS provider knows; did you " \
        "mean 'subnetId'?" in checked.stderr
    assert "templates[3] (aws-weight-zero): vmTypes: t3.medium: weight 0" in checked.stderr
    assert "4 template(s) usable" in checked.stdout
    assert wait_for(lambda: refused_metric(port) == 2, 10, what="the refused metric")
    # Fixed in place: served within seconds, no restart.
    fixed = [dict(t) for t in SIX]
    fixed[1]["subnetId"] = fixed[1].pop("subnetID")
    templates_file.write_text(json.dumps({"templates": fixed}))
    wait_for(lambda: "aws-typo" in offered(hostfactory), 15, every_s=0.3,
             what="the fixed template to be offered")
    assert wait_for(lambda: refused_metric(port) == 1, 10, what="one template refused")
    assert worker.proc is not None and worker.proc.poll() is None


def test_a_real_world_file_loads_whole_and_every_key_comes_back(
        templates_file: Path, worker_with: Callable[[dict[str, Any]], Proc],
        hostfactory: HostFactory) -> None:
    real = {"templates": [
        {"templateId": "OnDemand-Small", "maxNumber": 20, "priority": None,
         "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", "1"],
                        "nram": ["Numeric", "1024"], "rank": ["Numeric", "0"],
                        "priceInfo": ["String", "price:0.1,billingTimeUnitType:prorated_hour"]},
         "imageId": "ami-f09fbde7", "rootDeviceVolumeSize": 100,
         "instanceTags": "company=abc;project=awscloud", "subnetId": "subnet-20069069",
         "vmType": "t2.micro", "keyName": "Sym-Key", "securityGroupIds": ["sg-541fdc29"],
         "instanceProfile": "arn:aws:iam::123456789013:instance-profile/myRole",
         "priceType": "ondemand", "pgrpName": None, "onDemandCapacity": 0,
         "description": "Linux on demand", "providerApi": "RunInstances",
         "providerName": "aws-default", "providerType": "aws"},
        {"templateId": "Spot-VM", "maxNumber": 10,
         "attributes": {"type": "X86_64", "ncpus": 2, "nram": 4096},
         "imageId": "ami-01e24be29428c15b2", "subnetId": ["subnet-12a34b56", "subnet-123ab456"],
         "vmTypes": {"t2.medium": 1, "a1.xlarge": 2}, "priceType": "spot",
         "allocationStrategy": "lowestPrice", "spotFleetRequestExpiry": 40, "poolsCount": 1,
         "fleetRole": "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role",
         "maxSpotPrice": None, "pgrpName": None, "onDemandCapacity": 0, "userDataScript": None,
         "launchTemplateId": None, "fleetType": "instant"},
    ]}
    templates_file.write_text(json.dumps(real))
    checked = validate(templates_file)
    assert checked.returncode == 0 and "2 template(s), usable" in checked.stdout, checked
    worker_with({})
    served = {t["templateId"]: t for t in
              hostfactory.ok("getAvailableTemplates", {})["templates"]}
    for template in real["templates"]:
        back = served[template["templateId"]]
        assert list(back) == list(template)  # every key, in file order, nulls included
        for key, value in template.items():
            if key != "attributes":
                assert back[key] == value, key
    assert served["Spot-VM"]["attributes"]["ncpus"] == ["Numeric", "2"]


def test_a_file_with_no_usable_template_is_said_in_readiness(
        templates_file: Path, worker_with: Callable[[dict[str, Any]], Proc],
        query_url: str) -> None:
    templates_file.write_text(json.dumps({"templates": [SIX[1], SIX[3]]}))
    worker = worker_with({"wait": False})
    ready = wait_for(lambda: (r := httpx.get(f"{query_url}/readyz", timeout=2)).json()[
        "templates"]["file_problems"] and r, 20, what="readiness to say why")
    assert ready.status_code == 503 and not ready.json()["ready"]
    assert "no usable template" in ready.json()["reason"]
    assert "did you mean 'subnetId'" in ready.json()["reason"]
    # the log line is written just after the status document readiness reads: wait for it too
    wait_for(lambda: "no usable template" in worker.output(), 10, what="the worker's log")
    assert worker.proc is not None and worker.proc.poll() is None  # it keeps running
