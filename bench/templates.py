"""python -m bench.templates: loading a large templates file (issue "An administrator's own
templates file loads"). 10,000 AWS templates in awsprov_templates.json's shape, two in every
hundred with a problem (left out alone): the worker's whole load (read, check every field,
store, project the list) on SQLite and PostgreSQL, against the bare baseline of the same
run, ``orjson.loads`` of the same file. Writes bench/results-templates.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from commands_worker.adapters.projector import Projector
from commands_worker.adapters.sql.store import Store
from commands_worker.adapters.templates_file import load_templates_file
from commands_worker.service_layer import documents


def big_file(path: Path, count: int) -> None:
    templates: list[dict[str, Any]] = []
    for n in range(count):
        template: dict[str, Any] = {
            "templateId": f"aws-{n:05d}", "maxNumber": 100, "priority": None,
            "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", str(n % 64 + 1)],
                           "nram": ["Numeric", "4096"], "rank": ["Numeric", "0"]},
            "imageId": "ami-0abc1234def567890", "subnetId": "subnet-0aa11bb2,subnet-0cc33dd4",
            "instanceTags": f"team=hpc;n={n}", "keyName": "ops", "pgrpName": None,
            "securityGroupIds": ["sg-0123abcd"], "onDemandCapacity": 0,
            "fleetRole": "arn:aws:iam::1:role/fleet"}
        if n % 3:
            template |= {"priceType": "spot", "vmTypes": {"t3.small": 1, "t3.medium": 2},
                         "allocationStrategy": "capacityOptimized", "maxSpotPrice": "0.2"}
        else:
            template["vmType"] = "m5.large"
        if n % 100 == 7:
            template["subnetID"] = "subnet-0aa11bb2"  # a typo: refused alone
        if n % 100 == 8:
            template["vmTypes"] = {"t3.small": 0}
            template.pop("vmType", None)
        templates.append(template)
    path.write_bytes(orjson.dumps({"templates": templates}))


def timed(fn: Any, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--postgres", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-templates-"))
    path = work / "awsprov_templates.json"
    big_file(path, args.count)
    cache = redis.Redis.from_url(args.redis)
    projector = Projector(cache)
    results: dict[str, Any] = {"templates": args.count, "bytes": path.stat().st_size}
    results["bare_json_s"] = timed(lambda: orjson.loads(path.read_bytes()), args.runs)
    loaded = load_templates_file(path)
    results["refused"] = len(loaded.refused)
    results["parse_check_s"] = timed(lambda: load_templates_file(path), args.runs)
    for name, url in (("sqlite", f"sqlite:///{work / 'store.sqlite3'}"),
                      ("postgresql", args.postgres)):
        store = Store.from_url(url)
        store.create_schema()

        def whole_load(store: Store = store) -> None:
            # A changed file each time (the version grows), as a reload would find it.
            found = load_templates_file(path)
            templates, version = store.load_templates(found.templates)
            projector.project([documents.templates_doc(templates, version)])
            store.load_templates([])  # next run replaces the whole list again

        results[f"whole_load_{name}_s"] = timed(whole_load, args.runs)
        store.engine.dispose()
    cache.flushdb()
    summary = {k: round(statistics.median(v), 3) if isinstance(v, list) else v
               for k, v in results.items()}
    summary["ratio_parse_check_vs_bare"] = round(
        summary["parse_check_s"] / summary["bare_json_s"], 1)
    print(json.dumps(summary, indent=2))
    (Path(__file__).parent / "results-templates.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
