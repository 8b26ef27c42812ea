"""python -m bench.aws: the AWS provider against an EC2 endpoint on loopback (moto, its own
process, serving one call at a time: bench/moto_serial.py says why). Measures, in one run:

- **requestMachines → complete for 100 machines**: the plugin script sends the request,
  getRequestStatus (the query service) is polled until ``complete``; the time the provider
  needed to launch (the instances exist in the endpoint) is reported apart.
- **launched and reported per second**: ``--requests`` requests of ``--machines`` machines
  sent at once (by a producer, not the script), until every one is ``complete`` (each
  machine reported pending and running).
- **bare baseline**: boto3 alone, the same number of instances launched with the same
  RunInstances calls (one per request) and described once, no feed, no reports.

Writes bench/results-aws.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ROOT,
    Group,
    _http_ok,
    free_port,
    fresh_store,
    machine,
    redis_server,
    stack_env,
    start_worker,
    wait_until,
)

SCRIPTS = ROOT / "hostfactory" / "scripts"
HFCTL = Path(sys.executable).parent / "hfctl"
AWS = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
       "AWS_SECRET_ACCESS_KEY": "bench"}


def ec2_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")


def count_instances(ec2: Any, **tags: str) -> int:
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])


def bare(ec2: Any, subnet: str, requests: int, machines: int) -> dict[str, Any]:
    started = time.perf_counter()
    for n in range(requests):
        ec2.run_instances(ImageId="ami-0abc1234def567890", InstanceType="m5.large",
                          MinCount=machines, MaxCount=machines, SubnetId=subnet,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [
                              {"Key": "bare", "Value": str(n)}]}])
    launched = time.perf_counter() - started
    count_instances(ec2)
    took = time.perf_counter() - started
    total = requests * machines
    return {"instances": total, "launch_s": round(launched, 3), "launch_and_describe_s":
            round(took, 3), "instances_per_s": round(total / took, 1)}


# One connection for every poll: a client made per poll (httpx builds an SSL context each
# time) took a quarter of a core here, beside an EC2 endpoint that needs both.
_HTTP = httpx.Client(timeout=30)


def status(base: str, ids: list[str]) -> list[dict[str, Any]]:
    answer = _HTTP.post(f"{base}/hostfactory/request-status",
                        json={"requests": [{"requestId": i} for i in ids]}).json()
    requests: list[dict[str, Any]] = answer["requests"]
    return requests


def request(env: dict[str, str], workdir: Path, count: int, n: int) -> str:
    path = workdir / f"req-{n}.json"
    path.write_text(json.dumps({"template": {"templateId": "bench", "machineCount": count}}))
    done = subprocess.run([str(SCRIPTS / "requestMachines.sh"), "-f", str(path)], env=env,
                          capture_output=True, check=True)
    request_id: str = json.loads(done.stdout)["requestId"]
    return request_id


def one_hundred(env: dict[str, str], base: str, ec2: Any, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    rid = request(env, workdir, 100, 0)
    wait_until(lambda: count_instances(ec2, **{"hf:request-id": rid}) == 100, 120,
               "100 instances", every_s=0.05)
    launched = time.perf_counter() - started
    wait_until(lambda: status(base, [rid])[0]["status"] == "complete", 120, "complete",
               every_s=0.05)
    took = time.perf_counter() - started
    return {"machines": 100, "instances_exist_s": round(launched, 2),
            "request_to_complete_s": round(took, 2)}


def many(broker_url: str, base: str, requests: int, machines: int) -> dict[str, Any]:
    """Every request sent at once by one producer (the provider's rate, not the plugin's)."""
    from shared.client import CommandClient

    client = CommandClient(broker_url)
    started = time.perf_counter()
    ids = [str(client.create_request("bench", machines).request_id) for _ in range(requests)]
    sent = time.perf_counter() - started
    client.close()
    wait_until(lambda: all(r["status"] == "complete" for r in status(base, ids)), 300,
               "every request complete", every_s=0.1)
    took = time.perf_counter() - started
    total = requests * machines
    return {"instances": total, "requests_sent_s": round(sent, 2),
            "all_complete_s": round(took, 2),
            "instances_launched_and_reported_per_s": round(total / took, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.aws")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--machines", type=int, default=10)
    parser.add_argument("--follow", type=float,
                        help="the provider's --follow (default: the provider's own)")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "follow_s": args.follow}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        workdir = Path(tmp)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        moto = Group([sys.executable, "-m", "bench.moto_serial", "127.0.0.1", str(port)],
                     {**os.environ, "PYTHONPATH": str(ROOT)}, workdir / "moto.log")
        wait_until(lambda: _http_ok(f"{endpoint}/moto-api/"), 30, "moto's server")
        ec2 = ec2_client(endpoint)
        subnet = sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"])[0]
        results["bare_boto3"] = bare(ec2, subnet, args.requests, args.machines)
        templates = workdir / "awsprov_templates.json"
        templates.write_text(json.dumps({"templates": [{
            "templateId": "bench", "maxNumber": 1000,
            "attributes": {"type": "X86_64", "ncpus": 2, "nram": 8192},
            "imageId": "ami-0abc1234def567890", "vmType": "m5.large", "subnetId": subnet}]}))
        env = {**stack_env(redis_url, fresh_store("sqlite", workdir)),
               "TEMPLATES_FILE": str(templates), "WORKER_METRICS_PORT": "0"}
        import redis

        started = [start_worker(env, 2, workdir / "worker.log", redis.Redis.from_url(redis_url))]
        qport = free_port()
        base = f"http://127.0.0.1:{qport}"
        started.append(Group([sys.executable, "-m", "queries_service"],
                             {**env, "QUERY_PORT": str(qport)}, workdir / "queries.log"))
        wait_until(lambda: _http_ok(f"{base}/healthz"), 30, "the query service")
        follow = [] if args.follow is None else ["--follow", str(args.follow)]
        started.append(Group([sys.executable, "-m", "hfctl", "provider", "aws", *follow],
                             {**env, **AWS, "AWS_ENDPOINT_URL": endpoint},
                             workdir / "aws.log"))
        wait_until(lambda: redis.Redis.from_url(redis_url).exists("hf:v1:feed"), 30,
                   "the provider")
        plugin_env = {"PATH": "/usr/bin:/bin", "HFCQRS_HFCTL": str(HFCTL),
                      "QUERY_URL": base, "BROKER_URL": redis_url, "LOG_LEVEL": "WARNING",
                      "HF_PROVIDER_LOGDIR": str(workdir / "hf-log")}
        results["request_100"] = one_hundred(plugin_env, base, ec2, workdir)
        results["many"] = many(redis_url, base, args.requests, args.machines)
        results["ratio_to_bare"] = round(
            results["many"]["instances_launched_and_reported_per_s"]
            / results["bare_boto3"]["instances_per_s"], 3)
        results["provider_peak_rss_mb"] = started[-1].peak_rss_mb()
        for group in reversed([*started, moto]):
            group.stop()
    (ROOT / "bench" / "results-aws.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
