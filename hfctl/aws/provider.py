"""The AWS EC2 provider: an ordinary provider (docs/providers.md). It reads the provider feed
through its consumer group, launches and terminates instances with boto3, follows them and
reports every change over the public commands. Nothing else of the pair is touched.

- ``acquire``: the template's launch (RunInstances on demand, an instant EC2 Fleet for spot,
  a mix or several types), once per event: instances already tagged with the event id are the
  launch (a redelivered event, a restart), and every call carries a token derived from it.
  What EC2 would not launch is reported with ``commands.report_launch_failure`` and EC2's
  reason, so the request ends now instead of at its deadline.
- ``return`` / ``release``: TerminateInstances in batches, for instances this cluster owns.
- Following: every ``follow_s`` all instances tagged with the cluster are described (pages
  of 1,000) and each change is reported with ``observed_at``; spot interruption notices
  become ``reclaim_at``. Report command ids are derived from the instance, its state and its
  launch time, so a report sent twice (a restart re-reports what it finds) changes nothing.

EC2 calls run on a small thread pool, so a slow launch never holds back other events; the
feed, the acknowledgements and the reports stay on the main thread. An event is acknowledged
once its reports were sent; an instance that dies first leaves it pending, and it is handled
again (from the tags) by the same consumer on restart or by another after ``claim_idle_s``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import redis

from hfctl import feedloop, known
from hfctl.aws import ec2 as aws
from shared import awsprov, keys
from shared import feed as feeds
from shared.client import CommandClient

log = logging.getLogger("hostfactory.aws")
GROUP: Final = "aws"


@dataclass(frozen=True)
class Report:
    machine_id: str
    status: str
    request_id: str | None
    metadata: dict[str, Any]
    command_id: str


@dataclass
class Outcome:
    """What handling one event (or one follow pass) produced, to send from the main thread."""

    reports: list[Report] = field(default_factory=list)
    failure: dict[str, Any] | None = None  # report_launch_failure kwargs


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _user_data(event: dict[str, Any]) -> bytes | None:
    """The template's user-data script as the worker read it when it loaded the templates
    file (base64 in the event): the provider never opens a path an event names."""
    encoded = event.get("user_data")
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise aws.LaunchRefused("user_data: not base64") from None


def instance_report(instance: dict[str, Any], reclaim_at: float | None = None) -> Report:
    """One instance's state as a report whose command id names the state and the launch it
    belongs to (an instance stopped and started again reports ``running`` anew)."""
    status, metadata = aws.report_of(instance, reclaim_at)
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
    launch = metadata.get("launch_time", 0)
    suffix = f"-{launch}" if status not in ("shutting-down", "terminated") else ""
    suffix += "-reclaim" if reclaim_at is not None else ""
    return Report(instance["InstanceId"], status, tags.get(aws.REQUEST_TAG), metadata,
                  f"aws-{instance['InstanceId']}-{status}{suffix}")


class Ec2Work:
    """The EC2 side of each event: runs on the pool, returns an ``Outcome``."""

    def __init__(self, ec2: Any, cluster: str) -> None:
        self.ec2 = ec2
        self.cluster = cluster

    def acquire(self, event: dict[str, Any]) -> Outcome:
        order = aws.Order(self.cluster, event["request_id"], event["template_id"],
                          event["event_id"], int(event["machine_count"]))
        if not awsprov.is_aws_template(event.get("template") or {}):
            # Another provider's template (no imageId): not ours to launch or to fail.
            log.info("not an AWS template", extra={"event_id": order.event_id})
            return Outcome()
        spec: awsprov.LaunchSpec | None = None
        try:
            spec = awsprov.launch_spec(event.get("template") or {}, _user_data(event))
            launched = self._launch_once(spec, order)
        except (awsprov.TemplateProblems, aws.LaunchRefused) as exc:
            launched = aws.Launched(errors=[f"template {order.template_id}: {exc}"])
        outcome = Outcome([instance_report(i) for i in launched.instances])
        got = aws.units_of(spec, launched.instances) if spec else 0
        missing = order.count - got
        if missing > 0:
            reason = ("; ".join(dict.fromkeys(launched.errors))
                      or "an earlier attempt of this event launched fewer")
            outcome.failure = {
                "request_id": order.request_id, "count": missing,
                "message": f"EC2 launched {got} of {order.count}: {reason}"[:2000],
                "command_id": f"aws-launch-failure-{_digest(order.event_id)}"}
        log.info("acquired", extra={"event_id": order.event_id, "launched":
                                    len(launched.instances), "missing": max(missing, 0)})
        return outcome

    def _launch_once(self, spec: awsprov.LaunchSpec, order: aws.Order) -> aws.Launched:
        already = aws.owned(self.ec2, self.cluster, **{aws.EVENT_TAG: order.event_id})
        if already:
            log.info("already launched", extra={"event_id": order.event_id,
                                                "instances": len(already)})
            return aws.Launched(instances=already)
        launch = aws.create_fleet if spec.uses_fleet else aws.run_instances
        return launch(self.ec2, spec, order, order.count)

    def give_back(self, event: dict[str, Any]) -> Outcome:
        ids = [m["machine_id"] for m in event.get("machines") or []
               if isinstance(m, dict) and isinstance(m.get("machine_id"), str)]
        instances, unknown = aws.terminate(self.ec2, self.cluster, ids)
        if unknown:
            log.warning("not ours or gone", extra={"event_id": event["event_id"],
                                                   "instances": unknown[:20]})
        return Outcome([instance_report(i) for i in instances])

    def follow(self) -> list[Report]:
        """Every instance of the cluster as it stands, with its spot notice if it has one."""
        instances = aws.owned(self.ec2, self.cluster)
        notices = aws.spot_notices(self.ec2, instances)
        return [instance_report(i, notices.get(i["InstanceId"])) for i in instances]


class AwsProvider:
    def __init__(self, ec2: Any, client: CommandClient, feed: redis.Redis, consumer: str,
                 key: bytes, cluster: str = "hostfactory-cqrs", follow_s: float = 2.0,
                 claim_idle_s: float = 30.0, threads: int = 8) -> None:
        self.work = Ec2Work(ec2, cluster)
        self.key = key
        self.client = client
        self.feed = feed
        self.consumer = consumer
        self.follow_s = follow_s
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="ec2")
        self.threads = threads
        self.running: dict[str, Future[Outcome]] = {}  # feed entry id -> its EC2 work
        self.seen: dict[str, str] = {}  # instance id -> the last report's command id
        self.following: Future[list[Report]] | None = None
        self.next_follow = 0.0
        self.own_pending_read = False

    def join(self) -> None:
        feedloop.join_group(self.feed, GROUP)

    def take(self, block_ms: int) -> int:
        """Our own pending events first (a restart), what dead instances left, then new."""
        room = self.threads * 4 - len(self.running)
        if room <= 0:
            return 0
        entries: list[Any] = []
        if not self.own_pending_read:
            mine: Any = self.feed.xreadgroup(GROUP, self.consumer, {keys.FEED_STREAM_KEY: "0"},
                                             count=room)
            entries += [e for _, batch in mine or [] for e in batch]
            self.own_pending_read = len(entries) < room
        claimed: Any = self.feed.xautoclaim(keys.FEED_STREAM_KEY, GROUP, self.consumer,
                                            self.claim_idle_ms, "0-0", count=room)
        entries += claimed[1]
        read: Any = self.feed.xreadgroup(GROUP, self.consumer, {keys.FEED_STREAM_KEY: ">"},
                                         count=room, block=block_ms)
        entries += [e for _, batch in read or [] for e in batch]
        for entry_id, fields in entries:
            self._start(entry_id.decode(), fields)
        return len(entries)

    def _start(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        if entry_id in self.running:
            return
        try:
            event = feeds.verified(self.key, fields)
        except feeds.UnprovenEvent as exc:
            log.error("feed entry not proven the pair's: acknowledged, nothing done",
                      extra={"entry": entry_id, "reason": str(exc)})
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
            return
        verdict = known.check(self.feed, event)
        if verdict == known.WAIT:
            return  # its request's view is not there yet: claimed again after claim_idle_s
        if verdict is not None:
            log.error("feed event refused: acknowledged, nothing done",
                      extra={"entry": entry_id, "event_id": event.get("event_id"),
                             "reason": verdict})
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
            return
        handle = self.work.acquire if event["type"] == "acquire" else self.work.give_back
        self.running[entry_id] = self.pool.submit(handle, event)

    def finish(self) -> int:
        """Send what finished events produced, then acknowledge them."""
        done = [e for e, f in self.running.items() if f.done()]
        for entry_id in done:
            future = self.running.pop(entry_id)
            try:
                self._send(future.result())
            except Exception as exc:
                # Left unacknowledged: handled again from the tags (restart, or claim).
                log.warning("event not finished; it stays pending",
                            extra={"entry": entry_id, "error": str(exc)[:500]})
                continue
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
        return len(done)

    def _send(self, outcome: Outcome) -> None:
        for report in outcome.reports:
            self._report(report)
        if outcome.failure is not None:
            self.client.report_launch_failure(**outcome.failure)

    def _report(self, report: Report) -> None:
        if self.seen.get(report.machine_id) == report.command_id:
            return
        self.client.update_machine_status(
            report.machine_id, report.status, request_id=report.request_id,
            metadata=report.metadata, observed_at=time.time(), command_id=report.command_id)
        self.seen[report.machine_id] = report.command_id

    def follow(self) -> None:
        """Start a follow pass when one is due; report the last one when it is done."""
        if self.following is not None and self.following.done():
            following, self.following = self.following, None
            reports = following.result()
            for report in reports:
                self._report(report)
            listed = {r.machine_id for r in reports}
            self.seen = {k: v for k, v in self.seen.items() if k in listed}
        if self.following is None and time.monotonic() >= self.next_follow:
            self.next_follow = time.monotonic() + self.follow_s
            self.following = self.pool.submit(self.work.follow)

    def step(self) -> None:
        self.take(block_ms=50 if self.running or self.following else 200)
        self.finish()
        try:
            self.follow()
        except Exception as exc:
            log.warning("follow pass failed", extra={"error": str(exc)[:500]})

    def run(self, stop_after_s: float | None = None) -> None:
        feedloop.run(self.join, self.step, stop_after_s)
