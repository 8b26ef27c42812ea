"""The AWS provider against a real EC2 API endpoint on loopback: moto's server, its own
process. HostFactory's five scripts, a real worker and query service over real Redis, and
``hfctl provider aws`` as its own process; what the endpoint holds is checked with boto3."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import TEST_FEED_KEY, Proc, free_port, http_ok, wait_for
from tests.e2e.conftest import HostFactory, reading_the_feed

try:
    import boto3
    import moto  # noqa: F401
except ImportError:  # the dev extra is missing: skipped locally, a failure under CI
    if os.environ.get("CI"):
        raise
    pytest.skip("boto3 and moto (the dev extra) are not installed", allow_module_level=True)
IMAGE = "ami-0abc1234def567890"
ATTRIBUTES = {"type": "X86_64", "ncpus": 2, "nram": 8192}


@pytest.fixture(scope="module")
def ec2_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = Proc([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                {"PATH": "/usr/bin:/bin"}, log).start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/moto-api/"), 30, what="moto's server")
    yield url
    proc.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def ec2_of(endpoint: str) -> Any:
    return boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def ec2(ec2_endpoint: str) -> Any:
    return ec2_of(ec2_endpoint)


@pytest.fixture
def subnets(ec2: Any) -> list[str]:
    return sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"])[:2]


@pytest.fixture
def templates_file(tmp_path: Path, subnets: list[str]) -> Path:
    """awsprov_templates.json as an administrator writes it, for moto's default VPC."""
    base = {"maxNumber": 100, "attributes": ATTRIBUTES, "imageId": IMAGE,
            "instanceTags": "team=hpc;cost=grid", "keyName": "ops"}
    path = tmp_path / "awsprov_templates.json"
    path.write_text(json.dumps({"templates": [
        {**base, "templateId": "aws-ondemand", "vmType": "m5.large", "subnetId": subnets[0]},
        {**base, "templateId": "aws-spot", "priceType": "spot",
         "vmTypes": {"c5.xlarge": 1, "c5a.xlarge": 1}, "subnetId": ",".join(subnets),
         "allocationStrategy": "capacityOptimized", "maxSpotPrice": "0.20"},
        {**base, "templateId": "aws-bad-subnet", "vmType": "m5.large",
         "subnetId": "subnet-0doesnotexist0"},
    ]}))
    return path


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> str:
    return f"t{abs(hash(request.node.name)) % 10**8}"


def start_provider(stack_env: dict[str, str], endpoint: str, cluster: str, log: Path,
                   follow: str = "0.3", **env: str) -> Proc:
    """A provider process, once it reads the feed (its group takes new events only)."""
    argv = [sys.executable, "-m", "hfctl", "provider", "aws", "--cluster", cluster,
            "--consumer", "aws-1", "--follow", follow]
    proc = Proc(argv, {**stack_env, **aws_env(endpoint), **env}, log).start()
    reading_the_feed(stack_env["REDIS_URL"], "aws")
    return proc


@pytest.fixture
def provider(stack_env: dict[str, str], ec2_endpoint: str, cluster: str,
             tmp_path: Path) -> Iterator[Proc]:
    proc = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws.log")
    yield proc
    proc.stop()


def instances(ec2: Any, cluster: str, **tags: str) -> list[dict[str, Any]]:
    filters = [{"Name": "tag:hf:cluster", "Values": [cluster]}]
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def test_a_whole_hostfactory_cycle_on_ec2(hostfactory: HostFactory, worker: Proc,
                                          provider: Proc, ec2: Any, cluster: str,
                                          subnets: list[str]) -> None:
    templates = {t["templateId"]: t for t in
                 hostfactory.ok("getAvailableTemplates", {})["templates"]}
    assert templates["aws-spot"]["priceType"] == "spot"
    ondemand = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-ondemand", "machineCount": 3}})["requestId"]
    spot = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-spot", "machineCount": 2}})["requestId"]
    done = {rid: hostfactory.until(rid, "complete", 60) for rid in (ondemand, spot)}

    launched = {i["InstanceId"]: i for i in instances(ec2, cluster)}
    assert len(launched) == 5
    for rid, template, count in ((ondemand, "aws-ondemand", 3), (spot, "aws-spot", 2)):
        mine = instances(ec2, cluster, **{"hf:request-id": rid})
        assert len(mine) == count
        for instance in mine:
            tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
            assert tags["team"] == "hpc" and tags["hf:template-id"] == template
            assert instance["ImageId"] == IMAGE and instance["SubnetId"] in subnets
            assert instance["KeyName"] == "ops"
        answered = done[rid]["machines"]
        assert sorted(m["machineId"] for m in answered) == sorted(i["InstanceId"]
                                                                  for i in mine)
        for machine in answered:
            real = launched[machine["machineId"]]
            assert machine["name"] == real["PrivateDnsName"]
            assert machine["privateIpAddress"] == real["PrivateIpAddress"]
            assert machine["result"] == "succeed" and machine["status"] == "running"
            assert machine["instanceType"] == real["InstanceType"]
            assert "team=hpc" in machine["instanceTags"]
    assert {i["InstanceType"] for i in instances(ec2, cluster, **{"hf:request-id": ondemand})
            } == {"m5.large"}
    assert {m["priceType"] for m in done[spot]["machines"]} == {"spot"}
    assert {m["priceType"] for m in done[ondemand]["machines"]} == {"ondemand"}

    given_back = done[ondemand]["machines"][:2] + done[spot]["machines"][:1]
    returned = hostfactory.ok("requestReturnMachines", {"machines": [
        {"name": m["name"], "machineId": m["machineId"]} for m in given_back]})["requestId"]
    finished = hostfactory.until(returned, "complete", 60)
    assert {(m["result"], m["status"]) for m in finished["machines"]} == {
        ("succeed", "terminated")}
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances(ec2, cluster)}
    assert sorted(s for i, s in states.items()
                  if i in {m["machineId"] for m in given_back}) == ["terminated"] * 3
    assert sorted(states.values()).count("running") == 2
    gone = hostfactory.ok("getReturnRequests", {"machines": [
        {"name": m["name"], "machineId": m["machineId"]} for m in given_back]})
    assert sorted(r["gracePeriod"] for r in gone["requests"]) == [0, 0, 0]


def test_a_refused_launch_ends_the_request_with_ec2s_reason(
        hostfactory: HostFactory, worker: Proc, provider: Proc) -> None:
    asked = time.monotonic()
    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-bad-subnet", "machineCount": 2}})["requestId"]
    failed = hostfactory.until(rid, "complete_with_error", 30)
    assert time.monotonic() - asked < 30  # the deadline is 600 s away
    assert "InvalidSubnetID.NotFound" in failed["message"]
    assert failed["message"].startswith("2 of 2 machine(s) will not come")
    assert failed["machines"] == []


def test_kill_9_after_run_instances_launches_nothing_twice(
        hostfactory: HostFactory, worker: Proc, stack_env: dict[str, str],
        ec2_endpoint: str, ec2: Any, cluster: str, tmp_path: Path) -> None:
    """The provider launches, cannot report (its broker is away), and is killed before it
    acknowledged the event; restarted, it finds its instances by their tags."""
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    first = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws-1.log",
                           BROKER_URL=dead_broker)
    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-ondemand", "machineCount": 4}})["requestId"]
    wait_for(lambda: len(instances(ec2, cluster, **{"hf:request-id": rid})) == 4, 30,
             what="RunInstances")
    wait_for(lambda: "it stays pending" in first.output(), 30,
             what="the provider to fail to report (its broker is away)")
    first.kill()
    assert hostfactory.status(rid)[0]["status"] == "running"
    again = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws-2.log")
    try:
        done = hostfactory.until(rid, "complete", 60)
    finally:
        again.stop()
    assert len(instances(ec2, cluster)) == 4  # no duplicates
    assert len(done["machines"]) == 4
    assert "already launched" in again.output()


def test_running_is_reported_between_follow_passes(
        hostfactory: HostFactory, worker: Proc, stack_env: dict[str, str],
        ec2_endpoint: str, cluster: str, tmp_path: Path) -> None:
    """A launch's instances are looked at again while pending (every 0.5 s), so a request
    is complete soon after EC2 says they run, not at the next follow pass (60 s here)."""
    proc = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws.log", follow="60")
    try:
        time.sleep(1)  # the first full pass, at the start, is over
        asked = time.monotonic()
        rid = hostfactory.ok("requestMachines", {"template": {
            "templateId": "aws-ondemand", "machineCount": 2}})["requestId"]
        done = hostfactory.until(rid, "complete", 20)
        assert time.monotonic() - asked < 10
        assert [m["status"] for m in done["machines"]] == ["running", "running"]
    finally:
        proc.stop()


def test_what_ends_out_of_band_is_reported_also_across_a_restart(
        hostfactory: HostFactory, worker: Proc, stack_env: dict[str, str],
        ec2_endpoint: str, ec2: Any, cluster: str, tmp_path: Path) -> None:
    """Follow passes after the first list only instances not terminated; one terminated
    out of band (a console) leaves that list and is reported terminated by its id; one that
    ended while no provider ran is reported by the first full pass of the next start."""
    first = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws-1.log")
    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-ondemand", "machineCount": 2}})["requestId"]
    one, other = hostfactory.until(rid, "complete", 30)["machines"]

    def gone(machine: dict[str, Any]) -> bool:
        listed = {"machines": [{"name": machine["name"], "machineId": machine["machineId"]}]}
        return bool(hostfactory.ok("getReturnRequests", listed)["requests"])

    ec2.terminate_instances(InstanceIds=[one["machineId"]])
    wait_for(lambda: gone(one), 20, every_s=0.3, what="the out-of-band termination")
    first.stop()
    ec2.terminate_instances(InstanceIds=[other["machineId"]])
    time.sleep(1)
    assert not gone(other)  # nobody has said so yet
    again = start_provider(stack_env, ec2_endpoint, cluster, tmp_path / "aws-2.log")
    try:
        wait_for(lambda: gone(other), 20, every_s=0.3, what="the first pass after a start")
    finally:
        again.stop()


class CappedEc2:
    """EC2 with room for ``cap`` more instances: a RunInstances whose MinCount is beyond it is
    refused with InsufficientInstanceCapacity, as EC2 refuses it."""

    def __init__(self, ec2: Any, cap: int) -> None:
        self.ec2, self.cap = ec2, cap

    def run_instances(self, **call: Any) -> Any:
        from botocore.exceptions import ClientError

        if call["MinCount"] > self.cap:
            raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message":
                                         "We currently do not have sufficient m5.large "
                                         "capacity in the Availability Zone you requested"}},
                              "RunInstances")
        answer = self.ec2.run_instances(**call)
        self.cap -= len(answer["Instances"])
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ec2, name)


def test_a_partly_refused_launch_keeps_the_machines_it_got(
        hostfactory: HostFactory, worker: Proc, stack_env: dict[str, str],
        ec2: Any, cluster: str) -> None:
    from hfctl.aws.provider import AwsProvider
    from shared.client import CommandClient
    from shared.redis_urls import sync_client

    provider = AwsProvider(CappedEc2(ec2, 2), CommandClient(stack_env["REDIS_URL"]),
                           sync_client(stack_env["REDIS_URL"]), "capped",
                           key=TEST_FEED_KEY.encode(), cluster=cluster,
                           follow_s=0.3)
    stop = threading.Event()

    def run() -> None:
        provider.join()
        while not stop.is_set():
            provider.step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        rid = hostfactory.ok("requestMachines", {"template": {
            "templateId": "aws-ondemand", "machineCount": 5}})["requestId"]
        ended = hostfactory.until(rid, "complete_with_error", 30)
    finally:
        stop.set()
        thread.join(10)
    assert [m["result"] for m in ended["machines"]] == ["succeed", "succeed"]
    assert ended["message"].startswith("3 of 5 machine(s) will not come: EC2 launched 2 of 5")
    assert "InsufficientInstanceCapacity" in ended["message"]
    assert len(instances(ec2, cluster, **{"hf:request-id": rid})) == 2


def test_every_template_field_reaches_ec2(ec2_endpoint: str, ec2: Any, subnets: list[str],
                                          tmp_path: Path, cluster: str) -> None:
    """What an administrator wrote, as the endpoint holds it: run directly, no worker."""
    from hfctl.aws import ec2 as aws
    from shared import awsprov

    iam = boto3.client("iam", endpoint_url=ec2_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    profile = iam.create_instance_profile(InstanceProfileName=f"hf-{cluster}")
    group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/sh\necho joining the grid\n")
    image = ec2.describe_images()["Images"][0]
    template = {"templateId": "full", "maxNumber": 5, "attributes": ATTRIBUTES,
                "imageId": image["ImageId"], "vmType": "c5.large", "subnetId": subnets[1],
                "securityGroupIds": [group], "keyName": "ops", "userDataScript": str(script),
                "rootDeviceVolumeSize": 40, "volumeType": "gp3", "iops": 3000,
                "instanceProfile": profile["InstanceProfile"]["Arn"],
                "instanceTags": "team=hpc"}
    order = aws.Order(cluster, "req-full", "full", "acquire:req-full", 2)
    spec = awsprov.launch_spec(template, user_data=script.read_bytes())
    launched = aws.run_instances(ec2, spec, order, 2)
    assert launched.errors == [] and len(launched.instances) == 2
    instance = launched.instances[0]
    assert (instance["InstanceType"], instance["SubnetId"], instance["KeyName"]) == (
        "c5.large", subnets[1], "ops")
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    data = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"],
                                           Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(data) == script.read_bytes()
    [volume] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                              "Values": [instance["InstanceId"]]}])["Volumes"]
    assert (volume["Size"], volume["VolumeType"], volume["Iops"]) == (40, "gp3", 3000)
    # The same event again launches nothing: the provider finds its instances by tag.
    assert len(aws.owned_by_tag(ec2, cluster, "hf:event-id", ["acquire:req-full"])) == 2
    # The provider reads no file an event names: a script the event does not carry (the
    # worker resolves it when it loads the templates file) refuses the launch.
    missing = awsprov.launch_spec({**template, "userDataScript": "/etc/shadow"})
    with pytest.raises(aws.LaunchRefused, match="the event carries no script"):
        aws.run_instances(ec2, missing, order, 1)


@pytest.fixture
def weighted_templates(templates_file: Path, subnets: list[str], ec2: Any) -> dict[str, Any]:
    """Add a weighted spot template and one launching from a launch template made in the
    endpoint (image, key and instance type from it; the template's tags and subnet over it)."""
    image = ec2.describe_images()["Images"][1]["ImageId"]
    made = ec2.create_launch_template(LaunchTemplateName=f"admin-{time.time_ns()}",
                                      LaunchTemplateData={"ImageId": image, "KeyName": "lt-key",
                                                          "InstanceType": "t3.large"})
    lt_id = made["LaunchTemplate"]["LaunchTemplateId"]
    document = json.loads(templates_file.read_text())
    document["templates"] += [
        {"templateId": "aws-weighted", "maxNumber": 40, "attributes": ATTRIBUTES,
         "imageId": IMAGE, "priceType": "spot", "subnetId": ",".join(subnets),
         "vmTypes": {"t3.small": 1, "t3.medium": 2}, "fleetRole": "arn:aws:iam::1:role/f",
         "pgrpName": None, "onDemandCapacity": 0, "instanceTags": "team=weights"},
        {"templateId": "aws-from-lt", "maxNumber": 10, "attributes": ATTRIBUTES,
         "launchTemplateId": lt_id, "launchTemplateVersion": 1, "vmType": "m5.large",
         "subnetId": subnets[0], "instanceTags": "team=lt", "rootDeviceVolumeSize": 33}]
    templates_file.write_text(json.dumps(document))
    return {"image": image, "launch_template": lt_id}


def test_weighted_types_count_units_until_the_request_is_complete(
        weighted_templates: dict[str, Any], hostfactory: HostFactory, worker: Proc,
        provider: Proc, ec2: Any, cluster: str) -> None:
    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-weighted", "machineCount": 4}})["requestId"]
    done = hostfactory.until(rid, "complete", 60)
    mine = instances(ec2, cluster, **{"hf:request-id": rid})
    weight = {"t3.small": 1, "t3.medium": 2}
    assert sum(weight[i["InstanceType"]] for i in mine) >= 4
    assert sorted(m["machineId"] for m in done["machines"]) == sorted(
        i["InstanceId"] for i in mine)
    fleets = [f for f in ec2.describe_fleets()["Fleets"]
              if any(o.get("InstanceType") == "t3.medium"
                     for c in f["LaunchTemplateConfigs"] for o in c["Overrides"])]
    [fleet] = fleets
    overrides = fleet["LaunchTemplateConfigs"][0]["Overrides"]
    assert {(o["InstanceType"], o["WeightedCapacity"]) for o in overrides} == {
        ("t3.small", 1.0), ("t3.medium", 2.0)}
    assert fleet["TargetCapacitySpecification"]["TotalTargetCapacity"] == 4
    returned = hostfactory.ok("requestReturnMachines", {"machines": [
        {"name": m["name"], "machineId": m["machineId"]} for m in done["machines"]]})
    finished = hostfactory.until(returned["requestId"], "complete", 60)
    assert {(m["result"], m["status"]) for m in finished["machines"]} == {
        ("succeed", "terminated")}


def test_a_template_naming_a_launch_template_launches_from_it(
        weighted_templates: dict[str, Any], hostfactory: HostFactory, worker: Proc,
        provider: Proc, ec2: Any, cluster: str, subnets: list[str]) -> None:
    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-from-lt", "machineCount": 2}})["requestId"]
    done = hostfactory.until(rid, "complete", 60)
    mine = instances(ec2, cluster, **{"hf:request-id": rid})
    assert len(mine) == 2 == len(done["machines"])
    for instance in mine:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        # From the launch template: the image and the key; the template's fields over it.
        assert (instance["ImageId"], instance["KeyName"]) == (weighted_templates["image"],
                                                              "lt-key")
        assert instance["InstanceType"] == "m5.large" and instance["SubnetId"] == subnets[0]
        assert tags["team"] == "lt"
        # The root volume is sized on the launch template's image (the template names none).
        [volume] = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                                  "Values": [instance["InstanceId"]]}])["Volumes"]
        assert volume["Size"] == 33


def test_forged_and_replayed_feed_events_launch_and_terminate_nothing(
        hostfactory: HostFactory, worker: Proc, provider: Proc, ec2: Any, cluster: str,
        stack_env: dict[str, str]) -> None:
    """What the outside attack did, with XADD on the feed: five p5.48xlarge for a request
    that does not exist, a release of a healthy request's running machine, a user-data path
    on the provider's host, an entry signed with another key, and a genuine signed event
    replayed after its request ended. The provider does none of it."""
    from shared import feed as feeds

    rid = hostfactory.ok("requestMachines", {"template": {
        "templateId": "aws-ondemand", "machineCount": 2}})["requestId"]
    done = hostfactory.until(rid, "complete", 60)
    victim = done["machines"][0]["machineId"]
    r = redis.Redis.from_url(stack_env["REDIS_URL"])
    stream: Any = r.xrange("hf:v1:feed")
    [genuine] = [f for _, f in stream if f[b"event_id"] == f"acquire:{rid}".encode()]
    assert genuine[b"sig"]  # the worker signs what it publishes
    forged_acquire = {"event_id": "acquire:req-forged", "type": "acquire",
                      "request_id": "req-forged", "template_id": "aws-ondemand",
                      "machine_count": 5, "deadline_at": time.time() + 600,
                      "template": {"templateId": "aws-ondemand", "maxNumber": 10,
                                   "attributes": ATTRIBUTES, "imageId": IMAGE,
                                   "vmType": "p5.48xlarge",
                                   "userDataScript": "/etc/hostname"}}
    body = json.dumps(forged_acquire).encode()
    release = {"event_id": f"release:{victim}", "type": "release", "request_id": rid,
               "machines": [{"machine_id": victim, "request_id": rid}], "reason": "x"}
    release_body = json.dumps(release).encode()
    other_key = b"k" * 40
    entries = [
        {"event_id": "acquire:req-forged", "type": "acquire", "event": body},
        {"event_id": f"release:{victim}", "type": "release", "event": release_body},
        {"event_id": "acquire:req-forged", "type": "acquire", "event": body,
         "sig": feeds.signature(other_key, "acquire:req-forged", "acquire", body)},
        {"event_id": f"release:{victim}", "type": "release", "event": release_body,
         "sig": "0" * 64},
        genuine,  # replayed: its request is complete
    ]
    for fields in entries:
        r.xadd("hf:v1:feed", fields)

    def all_handled() -> bool:
        [group] = [g for g in r.xinfo_groups("hf:v1:feed") if g["name"] == b"aws"]
        return bool(group["lag"] == 0 and group["pending"] == 0)

    wait_for(all_handled, 20, what="the provider to take every forged entry")
    mine = instances(ec2, cluster)
    assert len(mine) == 2 and {i["State"]["Name"] for i in mine} == {"running"}
    assert not any(i["InstanceType"] == "p5.48xlarge" for i in mine)
    log = provider.output()
    assert log.count("not proven the pair's") == 4, log[-3000:]
    assert "unsigned" in log and "bad signature" in log
    assert f"request {rid} is not an open acquire request" in log
    assert hostfactory.status(rid)[0]["status"] == "complete"


def test_the_iam_policy_is_narrowed_to_the_templates_roles(ec2_endpoint: str, tmp_path: Path,
                                                          cluster: str) -> None:
    iam = boto3.client("iam", endpoint_url=ec2_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]})
    role = iam.create_role(RoleName=f"node-{cluster}", Path="/hostfactory-cqrs/",
                           AssumeRolePolicyDocument=trust)["Role"]
    profile = iam.create_instance_profile(InstanceProfileName=f"node-{cluster}")
    iam.add_role_to_instance_profile(InstanceProfileName=f"node-{cluster}",
                                     RoleName=f"node-{cluster}")
    templates = tmp_path / "awsprov_templates.json"
    templates.write_text(json.dumps({"templates": [
        {"templateId": "a", "maxNumber": 1, "attributes": ATTRIBUTES, "imageId": IMAGE,
         "vmType": "m5.large", "instanceProfile": profile["InstanceProfile"]["Arn"]},
        {"templateId": "b", "maxNumber": 1, "attributes": ATTRIBUTES, "imageId": IMAGE,
         "vmType": "m5.large", "instanceProfile": None}]}))
    done = subprocess.run([sys.executable, "-m", "hfctl", "provider", "aws-policy",
                           "--templates", str(templates), "--cluster", cluster],
                          env={"PATH": "/usr/bin:/bin", **aws_env(ec2_endpoint)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    statements = {s["Sid"]: s for s in json.loads(done.stdout)["Statement"]}
    assert statements["PassOnlyTheTemplatesRoles"]["Resource"] == [role["Arn"]]
    assert statements["TerminateOnlyThisCluster"]["Condition"] == {
        "StringEquals": {"ec2:ResourceTag/hf:cluster": cluster}}
    assert not any(s["Action"] == "iam:PassRole" and s["Resource"] == "*"
                   for s in statements.values())
