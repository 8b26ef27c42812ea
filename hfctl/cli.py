"""hfctl: run the pair, send commands, poll status, rebuild the cache, handle dead letters."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared import names
from shared.settings import Settings
from shared.views import FINAL_REQUEST_STATUSES


def _query_url(settings: Settings) -> str:
    return os.environ.get("QUERY_URL") or f"http://{settings.query_host}:{settings.query_port}"


def _json_arg(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"not JSON: {text!r} ({exc})") from None


# --- up ---------------------------------------------------------------------------------
def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def _start_redis(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise SystemExit(f"no Redis answers at {url}, and it is not local: start it first")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(parsed.port or 6379),
         "--dir", str(workdir), "--appendonly", "yes", "--appendfsync", "everysec",
         "--maxmemory-policy", "noeviction", "--save", ""],
        stdout=subprocess.DEVNULL)
    for _ in range(100):
        if _redis_answers(url):
            return proc
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("redis-server did not start (is it installed?)")


def _spawn(what: str, argv: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    # Own process group: Ctrl-C reaches us once, and we stop the children in order.
    return what, subprocess.Popen(argv, start_new_session=True)


def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not _redis_answers(settings.redis_url):
        print(f"no Redis at {settings.redis_url}: starting redis-server (data in var/redis)")
        started.append(("redis", _start_redis(settings.redis_url, Path("var/redis"))))
    py = sys.executable
    started.append(_spawn("worker", [
        py, "-m", "celery", "-A", "commands_worker.app", "worker",
        "-Q", ",".join(names.ALL_QUEUES), "-c", str(args.concurrency),
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]))
    started.append(_spawn("queries", [py, "-m", "queries_service"]))
    if args.simulate:
        started.append(_spawn("simulator", [
            py, "-m", "hfctl", "simulate",
            "--failure-rate", str(args.failure_rate)]))
    url = _query_url(settings)
    print(f"hostfactory-cqrs is up: store {settings.store_url}, cache {settings.cache_url}\n"
          f"  query service  {url}  (try {url}/templates)\n"
          f"  send           hfctl send create-request --template-id x86-small --max-number 2\n"
          f"  poll           hfctl status REQUEST_ID --wait\n"
          f"Ctrl-C stops everything started here.", flush=True)
    return _supervise(started)


def _supervise(started: list[tuple[str, subprocess.Popen[bytes]]]) -> int:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for what, proc in started:
            if proc.poll() is not None:
                print(f"{what} exited with {proc.returncode}; stopping the rest", file=sys.stderr)
                stopping, code = True, 1
        time.sleep(0.2)
    for _, proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
    for _, proc in reversed(started):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return code


# --- send, status ---------------------------------------------------------------------
def _client() -> Any:
    from shared.client import CommandClient

    return CommandClient.from_env()


def _send(task: str, kwargs: dict[str, Any]) -> int:
    """Validate and send one command; print the ids to poll."""
    from pydantic import ValidationError

    client = _client()
    try:
        sent = client.send(task, kwargs)
    except ValidationError as exc:
        print(f"refused before sending:\n{exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    shown = {"command_id": sent.command_id, "request_id": sent.request_id,
             "machine_id": sent.machine_id}
    print(json.dumps({k: v for k, v in shown.items() if v is not None}))
    return 0


def cmd_send_create(args: argparse.Namespace) -> int:
    return _send(names.CREATE_REQUEST_TASK, {
        "template_id": args.template_id, "max_number": args.max_number,
        "attributes": _json_arg(args.attributes), "request_id": args.request_id,
        "command_id": args.command_id, "correlation_id": args.correlation_id,
        "user_id": args.user_id})


def cmd_send_machine(args: argparse.Namespace) -> int:
    observed: Any = args.observed_at
    if observed is not None and observed.replace(".", "", 1).isdigit():
        observed = float(observed)
    return _send(names.UPDATE_MACHINE_STATUS_TASK, {
        "machine_id": args.machine_id, "status": args.status, "request_id": args.request_id,
        "metadata": _json_arg(args.metadata), "observed_at": observed,
        "command_id": args.command_id, "correlation_id": args.correlation_id})


def _progress(view: dict[str, Any]) -> str:
    machines = view.get("machines") or []
    total = view["max_number"]
    done = sum(1 for m in machines if m["result"] == "succeed")
    failed = sum(1 for m in machines if m["result"] == "fail")
    width = 20
    filled = (done * width) // max(total, 1)
    bar = "#" * filled + "x" * ((failed * width) // max(total, 1)) + "." * width
    return (f"[{bar[:width]}] {view['status']:<19} {done}/{total} running, {failed} failed, "
            f"{len(machines)} reported (v{view['version']})")


def cmd_status(args: argparse.Namespace) -> int:
    from shared.client import fetch_json

    url = f"{_query_url(Settings.from_env())}/requests/{args.request_id}"
    deadline = time.monotonic() + args.timeout
    tty = sys.stdout.isatty()
    last = ""
    while True:
        view = fetch_json(url)
        if view is None and not args.wait:
            print(f"unknown request {args.request_id}", file=sys.stderr)
            return 2
        line = _progress(view) if view else "(not visible yet)"
        if line != last:
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            last = line
        if not args.wait or (view and view["status"] in FINAL_REQUEST_STATUSES):
            break
        if time.monotonic() > deadline:
            print(f"\ngave up after {args.timeout}s", file=sys.stderr)
            return 2
        time.sleep(0.25)
    if tty:
        print()
    if args.json and view:
        print(json.dumps(view, indent=2))
    return 0 if view and view["status"] != "complete_with_error" else 1


# --- store-side operations ---------------------------------------------------------------
def _deps() -> Any:
    from commands_worker import bootstrap

    return bootstrap.deps()


def cmd_rebuild(args: argparse.Namespace) -> int:
    from commands_worker.service_layer.maintenance import rebuild_read_model

    print(json.dumps(rebuild_read_model(_deps())))
    return 0


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    from commands_worker.service_layer.maintenance import drain_dead_letter_inbox

    d = _deps()
    drain_dead_letter_inbox(d)
    letters = d.store.dead_letters(state=None if args.all else "open")
    if args.json:
        print(json.dumps([{**vars(letter)} for letter in letters], default=str))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.last_at))
        print(f"{letter.id:>6}  {when}  {letter.state:<8} x{letter.attempts}  "
              f"{letter.task or '-'}  {letter.command_id or '-'}\n        {letter.reason}")
    return 0


def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    from commands_worker.adapters.broker.replay import replay

    d = _deps()
    code = 0
    for letter_id in args.ids:
        try:
            print(replay(d, letter_id))
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    import redis

    from hfctl.simulator import Simulator
    from shared import logs

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    simulator = Simulator(_client(), redis.Redis.from_url(settings.cache_url),
                          failure_rate=args.failure_rate, delay_s=args.delay)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run worker + query service (+ simulator) on one machine")
    up.add_argument("--simulate", action="store_true", help="add a simulated provider")
    up.add_argument("--failure-rate", type=float, default=0.0,
                    help="share of simulated machines that fail (0..1)")
    up.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    up.set_defaults(fn=cmd_up)

    send = sub.add_parser("send", help="send a command").add_subparsers(dest="what",
                                                                         required=True)
    create = send.add_parser("create-request")
    create.add_argument("--template-id", required=True)
    create.add_argument("--max-number", type=int, required=True)
    create.add_argument("--attributes", help="JSON object")
    for flag in ("--request-id", "--command-id", "--correlation-id", "--user-id"):
        create.add_argument(flag)
    create.set_defaults(fn=cmd_send_create)
    machine = send.add_parser("machine-status")
    machine.add_argument("--machine-id", required=True)
    machine.add_argument("--status", required=True)
    machine.add_argument("--request-id")
    machine.add_argument("--metadata", help="JSON object")
    machine.add_argument("--observed-at", help="ISO-8601 or epoch seconds")
    machine.add_argument("--command-id")
    machine.add_argument("--correlation-id")
    machine.set_defaults(fn=cmd_send_machine)

    status = sub.add_parser("status", help="show a request's status")
    status.add_argument("request_id")
    status.add_argument("--wait", action="store_true", help="until the request is final")
    status.add_argument("--timeout", type=float, default=300.0)
    status.add_argument("--json", action="store_true", help="print the final view too")
    status.set_defaults(fn=cmd_status)

    sub.add_parser("rebuild-read-model",
                   help="re-project everything from the store").set_defaults(fn=cmd_rebuild)

    dead = sub.add_parser("dead-letters").add_subparsers(dest="what", required=True)
    listing = dead.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="replayed ones too")
    listing.set_defaults(fn=cmd_dead_letters_list)
    again = dead.add_parser("replay")
    again.add_argument("ids", nargs="+", type=int)
    again.set_defaults(fn=cmd_dead_letters_replay)

    simulate = sub.add_parser("simulate", help="run the simulated provider alone")
    simulate.add_argument("--failure-rate", type=float, default=0.0)
    simulate.add_argument("--delay", type=float, default=1.0, help="seconds per step")
    simulate.set_defaults(fn=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
