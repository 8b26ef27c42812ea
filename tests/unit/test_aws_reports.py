"""What an EC2 instance reports over the contract, and the command ids that keep a report
sent twice from changing anything (EC2's DescribeInstances shapes, no endpoint)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hfctl.aws import ec2 as aws
from hfctl.aws.provider import instance_report

LAUNCHED = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def instance(state: str = "running", **extra: Any) -> dict[str, Any]:
    return {"InstanceId": "i-0abc", "State": {"Name": state}, "InstanceType": "m5.large",
            "PrivateDnsName": "ip-10-0-0-7.ec2.internal", "PrivateIpAddress": "10.0.0.7",
            "PublicIpAddress": "54.1.2.3", "LaunchTime": LAUNCHED,
            "Tags": [{"Key": "team", "Value": "hpc"}, {"Key": "hf:request-id", "Value": "r1"},
                     {"Key": "aws:ec2launchtemplate:id", "Value": "lt-1"}], **extra}


def test_a_running_instance_reports_its_host_name_and_addresses() -> None:
    report = instance_report(instance())
    assert (report.machine_id, report.status, report.request_id) == ("i-0abc", "running", "r1")
    assert report.metadata == {
        "name": "ip-10-0-0-7.ec2.internal", "private_ip": "10.0.0.7", "public_ip": "54.1.2.3",
        "instance_type": "m5.large", "price_type": "ondemand",
        "launch_time": int(LAUNCHED.timestamp()), "instance_tags": "team=hpc",
        "cloud_host_id": "i-0abc"}
    assert instance_report(instance(InstanceLifecycle="spot")).metadata["price_type"] == "spot"


def test_command_ids_name_the_state_and_the_launch() -> None:
    first = instance_report(instance()).command_id
    assert first == instance_report(instance()).command_id  # re-reported: a duplicate
    restarted = instance(LaunchTime=datetime(2026, 11, 28, 11, 0, tzinfo=UTC))
    assert instance_report(restarted).command_id != first  # stopped and started: new
    gone = instance_report(instance("terminated", StateReason={
        "Code": "Server.SpotInstanceTermination", "Message": "Spot instance termination"}))
    assert gone.command_id == "aws-i-0abc-terminated"
    assert gone.metadata["message"] == "Spot instance termination"
    noticed = instance_report(instance(), reclaim_at=1_900_000_000.0)
    assert noticed.command_id == first + "-reclaim"
    assert noticed.metadata["reclaim_at"] == 1_900_000_000.0


class SpotRequests:
    """DescribeSpotInstanceRequests answering one request with its two-minute notice."""

    def __init__(self, code: str) -> None:
        self.code = code

    def describe_spot_instance_requests(self, Filters: list[Any]) -> dict[str, Any]:
        return {"SpotInstanceRequests": [{"InstanceId": "i-0abc", "Status": {
            "Code": self.code, "UpdateTime": LAUNCHED}}]}


def test_a_spot_interruption_notice_becomes_reclaim_at() -> None:
    spot = [instance(InstanceLifecycle="spot"), instance(InstanceId="i-od")]
    ec2 = SpotRequests("marked-for-termination")
    assert aws.spot_notices(ec2, spot) == {"i-0abc": LAUNCHED.timestamp() + 120}
    assert aws.spot_notices(SpotRequests("fulfilled"), spot) == {}


def test_another_providers_template_is_left_alone() -> None:
    """Every provider reads every acquire event: a template without imageId is not an AWS
    one, and the AWS provider neither launches for it nor says its machines will not come."""
    from hfctl.aws.provider import Ec2Work

    work = Ec2Work(ec2=object(), cluster="c")  # any EC2 call would fail on this object
    event = {"request_id": "r1", "template_id": "onprem", "event_id": "acquire:r1",
             "machine_count": 2, "template": {"templateId": "onprem", "rack": "b7"}}
    outcome = work.acquire(event, [])
    assert (outcome.reports, outcome.failure) == ([], None)
    broken = work.acquire({**event, "template": {"templateId": "t", "imageId": "ami-1"}}, [])
    assert broken.failure is not None and "vmType or vmTypes" in broken.failure["message"]
