"""The store's high-availability example (deploy/patroni/patroni.yml) is a configuration
Debian's Patroni accepts, checked against a real etcd started here, and keeps a commit on two
nodes."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT, free_port, unavailable


def test_the_patroni_example_validates(tmp_path: Path) -> None:
    patroni, etcd = shutil.which("patroni"), shutil.which("etcd")
    if patroni is None or etcd is None:
        unavailable("patroni and etcd (Debian packages patroni, etcd-server)")
    assert patroni is not None and etcd is not None
    client, peer = free_port(), free_port()
    server = subprocess.Popen(
        [etcd, "--name", "check", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"check=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = (ROOT / "deploy" / "patroni" / "patroni.yml").read_text()
        config = yaml.safe_load(text)
        dcs = config["bootstrap"]["dcs"]
        assert dcs["synchronous_mode"] and dcs["synchronous_mode_strict"]
        assert dcs["maximum_lag_on_failover"] == 0
        # This machine's names and ports instead of the example's hosts: what the validator
        # checks is that they resolve, answer (etcd) or are free (PostgreSQL, the REST API).
        config["etcd3"]["hosts"] = f"127.0.0.1:{client}"
        config["postgresql"]["listen"] = f"127.0.0.1:{free_port()}"
        config["restapi"]["listen"] = f"127.0.0.1:{free_port()}"
        checked = tmp_path / "patroni.yml"
        checked.write_text(yaml.safe_dump(config))
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run([patroni, "--validate-config", str(checked)],
                                  capture_output=True, text=True, timeout=60, check=False)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # etcd still starting
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        server.terminate()
        server.wait(timeout=20)
