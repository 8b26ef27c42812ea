"""hfctl: run the pair, send commands, poll status, rebuild the cache, handle dead letters."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hfctl.status import cmd_status
from hfctl.up import cmd_up
from shared import names
from shared.client import CommandClient
from shared.settings import Settings, SettingsError


def _json_arg(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"not JSON: {text!r} ({exc})") from None


# --- send ---------------------------------------------------------------------------------
def _send(task: str, kwargs: dict[str, Any]) -> int:
    """Validate and send one command; print the ids to poll."""
    from pydantic import ValidationError

    client = CommandClient.from_env()
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


# --- store-side operations, through the worker's operator entry point ---------------------
def cmd_rebuild(args: argparse.Namespace) -> int:
    from commands_worker.entrypoints import admin

    print(json.dumps(admin.rebuild_read_model()))
    return 0


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    from commands_worker.entrypoints import admin

    letters = admin.dead_letters(include_replayed=args.all)
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
    from commands_worker.entrypoints import admin

    code = 0
    for letter_id in args.ids:
        try:
            print(admin.replay_dead_letter(letter_id))
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            code = 1
    return code


def cmd_templates_validate(args: argparse.Namespace) -> int:
    from commands_worker.entrypoints import admin

    count, problems = admin.template_problems(Path(args.file))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        # Exit 1 when any template is left out: the served ones still load, each refused
        # one is named above.
        print(f"{args.file}: {count} template(s) usable; the ones named above are left out"
              if count else f"{args.file}: no usable template: the worker cannot load it")
        return 1
    print(f"{args.file}: {count} template(s), usable")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from hfctl.simulator import Simulator
    from shared import logs
    from shared.redis_urls import sync_client

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    simulator = Simulator(CommandClient(settings.broker_url), sync_client(settings.cache_url),
                          failure_rate=args.failure_rate, delay_s=args.delay,
                          reclaim_rate=args.reclaim_rate, key=settings.feed_key())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        simulator.run()
    return 0


def cmd_provider_aws(args: argparse.Namespace) -> int:
    import socket

    from hfctl.aws.main import ec2_client
    from hfctl.aws.provider import AwsProvider
    from shared import logs
    from shared.redis_urls import sync_client

    settings = Settings.from_env()
    logs.configure(settings.log_level)
    key = settings.feed_key()
    if key is None:
        print("hfctl provider aws: FEED_SIGNING_KEY (or FEED_SIGNING_KEY_FILE) is required, "
              "the same as the worker's: the provider acts only on feed events the pair "
              "signed", file=sys.stderr)
        return 2
    provider = AwsProvider(
        ec2_client(args.threads), CommandClient(settings.broker_url, connect_timeout_s=5.0),
        sync_client(settings.cache_url), consumer=args.consumer or socket.gethostname(),
        key=key, cluster=args.cluster, follow_s=args.follow, claim_idle_s=args.claim_idle,
        threads=args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        provider.run()
    return 0


def cmd_provider_aws_policy(args: argparse.Namespace) -> int:
    from hfctl.aws import policy
    from hfctl.aws.main import iam_client

    profiles = policy.instance_profiles(Path(args.templates))
    try:
        roles = policy.role_arns(iam_client(), profiles) if profiles else []
    except LookupError as exc:
        print(f"hfctl provider aws-policy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(policy.policy(args.cluster, roles), indent=2))
    return 0


# --- the parser ---------------------------------------------------------------------------
def _add_up(sub: Any) -> None:
    up = sub.add_parser("up", help="run worker + query service (+ simulator) on one machine")
    up.add_argument("--simulate", action="store_true", help="add a simulated provider")
    up.add_argument("--failure-rate", type=float, default=0.0,
                    help="share of simulated machines that fail (0..1)")
    up.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    up.set_defaults(fn=cmd_up)
    simulate = sub.add_parser("simulate", help="run the simulated provider alone")
    simulate.add_argument("--failure-rate", type=float, default=0.0)
    simulate.add_argument("--delay", type=float, default=1.0, help="seconds per step")
    simulate.add_argument("--reclaim-rate", type=float, default=0.0,
                          help="share of running machines given a spot interruption notice")
    simulate.set_defaults(fn=cmd_simulate)


def _add_provider(sub: Any) -> None:
    import os

    provider = sub.add_parser("provider", help="run a provider").add_subparsers(
        dest="what", required=True)
    aws = provider.add_parser("aws", help="launch and terminate on AWS EC2 (needs boto3: "
                              "pip install 'hostfactory-cqrs[aws]'); AWS settings from the "
                              "standard chain (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, ...)")
    aws.add_argument("--cluster", default=os.environ.get("HF_AWS_CLUSTER", "hostfactory-cqrs"),
                     help="the hf:cluster tag of this pair's instances (HF_AWS_CLUSTER)")
    aws.add_argument("--consumer", help="this instance's name in the feed's consumer group "
                     "(default the host name; give each instance on one host its own)")
    aws.add_argument("--follow", type=float, default=10.0,
                     help="seconds between passes over every instance (out-of-band changes: "
                     "a console termination, a spot interruption notice); a launch's "
                     "instances are looked at sooner, until they leave pending")
    aws.add_argument("--claim-idle", type=float, default=30.0,
                     help="take over events another instance left pending this long")
    aws.add_argument("--threads", type=int, default=8, help="EC2 calls at once")
    aws.set_defaults(fn=cmd_provider_aws)
    narrowed = provider.add_parser(
        "aws-policy", help="print the AWS provider's IAM policy narrowed to a templates file: "
        "PassRole only for the roles of the instance profiles it names, terminate only this "
        "cluster's instances (needs IAM read access to resolve the profiles)")
    narrowed.add_argument("--templates", required=True, help="the worker's TEMPLATES_FILE")
    narrowed.add_argument("--cluster", default=os.environ.get("HF_AWS_CLUSTER",
                                                              "hostfactory-cqrs"))
    narrowed.set_defaults(fn=cmd_provider_aws_policy)


def _add_send(sub: Any) -> None:
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
    machine.add_argument("--metadata", help="JSON object")
    machine.add_argument("--observed-at", help="ISO-8601 or epoch seconds")
    for flag in ("--request-id", "--command-id", "--correlation-id"):
        machine.add_argument(flag)
    machine.set_defaults(fn=cmd_send_machine)


def _add_status(sub: Any) -> None:
    status = sub.add_parser("status", help="show a request's status")
    status.add_argument("request_id")
    status.add_argument("--wait", action="store_true", help="until the request is final")
    status.add_argument("--timeout", type=float, default=300.0)
    status.add_argument("--json", action="store_true", help="print the final view too")
    status.add_argument("--history", action="store_true",
                        help="every command that touched the request, in order")
    status.set_defaults(fn=cmd_status)


def _stats(args: argparse.Namespace) -> int:
    from hfctl.stats import cmd_stats

    settings = Settings.from_env()
    args.worker = args.worker or [
        f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}/metrics"]
    args.query = args.query or [settings.query_url]
    return cmd_stats(args)


def _add_stats(sub: Any) -> None:
    stats = sub.add_parser("stats", help="one screen: queues, rates, lag, dead letters, "
                           "targets up (from the metrics endpoints)")
    stats.add_argument("--worker", action="append", default=[],
                       help="a worker host's metrics URL (repeat; default this host's)")
    stats.add_argument("--query", action="append", default=[],
                       help="a query service's base URL (repeat; default QUERY_URL)")
    stats.add_argument("--every", type=float, default=2.0, help="seconds between readings")
    stats.add_argument("--watch", action="store_true", help="keep refreshing")
    stats.set_defaults(fn=_stats)


def _add_store_operations(sub: Any) -> None:
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
    templates = sub.add_parser("templates").add_subparsers(dest="what", required=True)
    validate = templates.add_parser("validate", help="explain every problem of a templates file")
    validate.add_argument("file")
    validate.set_defaults(fn=cmd_templates_validate)


def _plugin(args: argparse.Namespace) -> int:
    from hfctl.plugin import main as plugin

    return plugin([args.operation, "-f", args.file])


def _parser() -> argparse.ArgumentParser:
    from hfctl.plugin import OPERATIONS

    parser = argparse.ArgumentParser(prog="hfctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plugin = sub.add_parser("hostfactory", help="the HostFactory provider plugin: one "
                            "JSON object on stdout (hostfactory/scripts/*.sh run this)")
    plugin.add_argument("operation", choices=OPERATIONS)
    plugin.add_argument("-f", "--file", required=True, help="HostFactory's input file")
    plugin.set_defaults(fn=_plugin)
    for add in (_add_up, _add_provider, _add_send, _add_status, _add_stats, _add_store_operations):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except SettingsError as exc:
        print(f"hfctl: bad setting: {exc}", file=sys.stderr)
        return 2
    return code
