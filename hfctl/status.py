"""``hfctl status``: a poller with a progress bar. With ``--wait`` it long-polls the query
service (``min_version`` + ``wait``), so each line appears the moment the view changes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any
from urllib.parse import quote

from shared.client import fetch_json
from shared.settings import Settings
from shared.views import FINAL_REQUEST_STATUSES

LONG_POLL_S = 30


def progress(view: dict[str, Any]) -> str:
    machines = view.get("machines") or []
    total = view["max_number"]
    done = sum(1 for m in machines if m["result"] == "succeed")
    failed = sum(1 for m in machines if m["result"] == "fail")
    width = 20
    filled = (done * width) // max(total, 1)
    bar = "#" * filled + "x" * ((failed * width) // max(total, 1)) + "." * width
    # A return request's machines succeed by being given back.
    word = "returned" if view.get("kind") == "return" else "running"
    return (f"[{bar[:width]}] {view['status']:<19} {done}/{total} {word}, {failed} failed, "
            f"{len(machines)} reported (v{view['version']})")


def _next_view(url: str, seen: int, left_s: float) -> dict[str, Any] | None:
    """The view once it is newer than version ``seen``, or as it is when the wait runs out."""
    wait_s = max(1, min(LONG_POLL_S, int(left_s)))
    return fetch_json(f"{url}?min_version={seen + 1}&wait={wait_s}", timeout_s=wait_s + 10)


def _show(line: str, tty: bool) -> None:
    print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)


def history_lines(history: dict[str, Any]) -> list[str]:
    """One line per command, in the order applied: when, task, outcome, machine, version."""
    lines = []
    for e in history["entries"]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["at"]))
        task = e["task"].removeprefix("commands.")
        version = f"v{e['version_after']}" if e["version_after"] is not None else "-"
        machine = e["machine_id"] or ""
        reason = f"  {e['reason']}" if e["reason"] else ""
        lines.append(f"{when}  {task:<22} {e['outcome']:<11} {version:<5} {machine:<24} "
                     f"{e['command_id']}{reason}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    url = f"{Settings.from_env().query_url}/requests/{quote(args.request_id, safe='')}"
    if args.history:
        history = fetch_json(f"{url}/history")
        if history is None:
            print(f"unknown request {args.request_id}", file=sys.stderr)
            return 2
        print("\n".join(history_lines(history)) if not args.json
              else json.dumps(history, indent=2))
        return 0
    deadline = time.monotonic() + args.timeout
    tty = sys.stdout.isatty()
    view = fetch_json(url)
    if view is None and not args.wait:
        print(f"unknown request {args.request_id}", file=sys.stderr)
        return 2
    _show(progress(view) if view else "(not visible yet)", tty)
    while args.wait and not (view and view["status"] in FINAL_REQUEST_STATUSES):
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"\ngave up after {args.timeout}s", file=sys.stderr)
            return 2
        newer = _next_view(url, view["version"] if view else 0, left)
        if newer is not None and (view is None or newer["version"] > view["version"]):
            view = newer
            _show(progress(view), tty)
    if tty:
        print()
    if args.json and view:
        print(json.dumps(view, indent=2))
    return 0 if view and view["status"] != "complete_with_error" else 1
