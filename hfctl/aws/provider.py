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
from shared import awsprov, keys, names
from shared import feed as feeds
from shared.client import CommandClient

log = logging.getLogger("hostfactory.aws")
GROUP: Final = "aws"
# Between follow passes, instances still pending are looked at again: this long after a
# launch, then each wait half as long again as the last, up to the follow interval (EC2's
# instances are pending for 10-60 s, and DescribeInstances is rate-limited per account).
LOOK_AGAIN_S: Final = 0.5
LOOK_BACKOFF: Final = 1.5


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

    def launched_for(self, event_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The instances already tagged with each of these events (an earlier delivery of
        one launched them): one DescribeInstances for all the acquire events read together,
        not one each (against moto's endpoint each was a scan of every instance)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for instance in aws.owned_by_tag(self.ec2, self.cluster, aws.EVENT_TAG, event_ids):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
            found.setdefault(tags.get(aws.EVENT_TAG, ""), []).append(instance)
        return found

    def acquire(self, event: dict[str, Any], already: list[dict[str, Any]]) -> Outcome:
        """Launch what ``event`` asks, unless ``already`` (its instances, found by their
        event tag) shows an earlier delivery did."""
        order = aws.Order(self.cluster, event["request_id"], event["template_id"],
                          event["event_id"], int(event["machine_count"]))
        if not awsprov.is_aws_template(event.get("template") or {}):
            # Another provider's template (no imageId): not ours to launch or to fail.
            log.info("not an AWS template", extra={"event_id": order.event_id})
            return Outcome()
        spec: awsprov.LaunchSpec | None = None
        try:
            spec = awsprov.launch_spec(event.get("template") or {}, _user_data(event))
            launched = self._launch_once(spec, order, already)
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

    def _launch_once(self, spec: awsprov.LaunchSpec, order: aws.Order,
                     already: list[dict[str, Any]]) -> aws.Launched:
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

    def follow(self, alive: list[str] | None) -> list[Report]:
        """The cluster's instances as they stand, with spot notices. ``alive`` None: every
        instance EC2 still lists (terminated ones too, for an hour: the first pass after a
        start reports what ended while no provider ran); else those not terminated, and of
        ``alive`` (last reported not terminated) those that left that set."""
        if alive is None:
            instances = aws.owned(self.ec2, self.cluster)
        else:
            instances = aws.owned_alive(self.ec2, self.cluster)
            listed = {i["InstanceId"] for i in instances}
            left = [i for i in alive if i not in listed]
            instances += aws.owned_by_ids(self.ec2, self.cluster, left) if left else []
        notices = aws.spot_notices(self.ec2, instances)
        return [instance_report(i, notices.get(i["InstanceId"])) for i in instances]

    def look_again(self, ids: list[str]) -> list[Report]:
        """These instances (launched moments ago, still pending) as they stand now."""
        return [instance_report(i) for i in aws.owned_by_ids(self.ec2, self.cluster, ids)]


def _settle(future: Future[Outcome], fn: Any, *args: Any) -> None:
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)


class AwsProvider:
    def __init__(self, ec2: Any, client: CommandClient, feed: redis.Redis, consumer: str,
                 key: bytes, cluster: str = "hostfactory-cqrs", follow_s: float = 10.0,
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
        self.seen: dict[str, Report] = {}  # instance id -> its last report
        self.following: Future[list[Report]] | None = None
        self.full_pass = False  # the pass in flight lists every instance
        self.passed_once = False  # a full pass since the start
        self.next_follow = 0.0
        self.next_look = 0.0
        self.look_every = LOOK_AGAIN_S
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
        acquires = []
        for entry_id, fields in entries:
            event = self._admit(entry_id.decode(), fields)
            if event is None:
                continue
            if event["type"] == "acquire":
                acquires.append((entry_id.decode(), event))
            else:
                self.running[entry_id.decode()] = self.pool.submit(self.work.give_back, event)
        if acquires:
            self._acquire_together(acquires)
        return len(entries)

    def _acquire_together(self, acquires: list[tuple[str, dict[str, Any]]]) -> None:
        """One lookup for every event's earlier instances, then each launch on the pool."""
        futures: dict[str, Future[Outcome]] = {entry_id: Future() for entry_id, _ in acquires}
        self.running.update(futures)

        def launch_all() -> None:
            try:
                found = self.work.launched_for([event["event_id"] for _, event in acquires])
            except Exception as exc:  # each stays pending, handled again
                for future in futures.values():
                    future.set_exception(exc)
                return
            for entry_id, event in acquires:
                self.pool.submit(_settle, futures[entry_id], self.work.acquire, event,
                                 found.get(event["event_id"], []))

        self.pool.submit(launch_all)

    def _admit(self, entry_id: str, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
        """The event of a feed entry to act on, or None (running already, waiting for its
        request's view, or refused and acknowledged)."""
        if entry_id in self.running:
            return None
        try:
            event = feeds.verified(self.key, fields)
        except feeds.UnprovenEvent as exc:
            log.error("feed entry not proven the pair's: acknowledged, nothing done",
                      extra={"entry": entry_id, "reason": str(exc)})
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
            return None
        verdict = known.check(self.feed, event)
        if verdict == known.WAIT:
            return None  # its request's view is not there: claimed again after claim_idle_s
        if verdict is not None:
            log.error("feed event refused: acknowledged, nothing done",
                      extra={"entry": entry_id, "event_id": event.get("event_id"),
                             "reason": verdict})
            self.feed.xack(keys.FEED_STREAM_KEY, GROUP, entry_id)
            return None
        return event

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
        extra = [] if outcome.failure is None else [
            (names.REPORT_LAUNCH_FAILURE_TASK, outcome.failure)]
        self._report(outcome.reports, extra)
        if any(r.status == "pending" for r in outcome.reports):  # a launch: look again soon
            self.look_every = LOOK_AGAIN_S
            self.next_look = min(self.next_look, time.monotonic() + LOOK_AGAIN_S)

    def _report(self, reports: list[Report],
                extra: list[tuple[str, dict[str, Any]]]) -> None:
        """Send the reports that say something new, and ``extra``, in one round trip."""
        new = [r for r in reports if (last := self.seen.get(r.machine_id)) is None
               or last.command_id != r.command_id]
        now = time.time()
        commands = [(names.UPDATE_MACHINE_STATUS_TASK, {
            "machine_id": r.machine_id, "status": r.status, "request_id": r.request_id,
            "metadata": r.metadata, "observed_at": now, "command_id": r.command_id})
            for r in new]
        if commands or extra:
            self.client.send_many([*commands, *extra])
        for report in new:
            self.seen[report.machine_id] = report

    def follow(self) -> None:
        """A follow pass every ``follow_s`` (the first one of every instance EC2 lists, then
        of those not terminated, and those that just left that set); between them, looks at
        the instances still pending (``LOOK_AGAIN_S`` after a launch, then backing off), so a
        launch is reported running soon after EC2 says so, not a whole interval later. One
        call at a time."""
        if self.following is not None and self.following.done():
            following, self.following = self.following, None
            reports = following.result()
            self._report(reports, [])
            if self.full_pass:
                listed = {r.machine_id for r in reports}
                self.seen = {k: v for k, v in self.seen.items() if k in listed}
                self.passed_once = True
        if self.following is not None:
            return
        now = time.monotonic()
        if now >= self.next_follow:
            self.next_follow = now + self.follow_s
            alive = None if not self.passed_once else [
                k for k, r in self.seen.items() if r.status != "terminated"]
            self.full_pass = True
            self.following = self.pool.submit(self.work.follow, alive)
        elif now >= self.next_look and (pending := [
                k for k, r in self.seen.items() if r.status == "pending"]):
            self.next_look = now + self.look_every
            self.look_every = min(self.look_every * LOOK_BACKOFF, self.follow_s)
            self.full_pass = False
            self.following = self.pool.submit(self.work.look_again, pending)

    def step(self) -> None:
        self.take(block_ms=50 if self.running or self.following else 200)
        self.finish()
        try:
            self.follow()
        except Exception as exc:
            log.warning("follow pass failed", extra={"error": str(exc)[:500]})

    def run(self, stop_after_s: float | None = None) -> None:
        feedloop.run(self.join, self.step, stop_after_s)
