"""EC2 calls of the AWS provider: launch, find, terminate, and what an instance reports.

Every instance the provider launches carries tags: ``hf:cluster`` (which pair it belongs to),
``hf:request-id``, ``hf:template-id`` and ``hf:event-id``, plus the template's own. What the
provider owns is what carries its cluster's tag, so its state is rebuilt from EC2 itself after
a restart. Every launch carries an idempotency token derived from the feed event (EC2 answers
a repeated call with the first call's instances); the provider also looks for instances tagged
with the event before it launches, which holds where tokens are not honoured.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from shared.awsprov import LaunchSpec

CLUSTER_TAG: Final = "hf:cluster"
REQUEST_TAG: Final = "hf:request-id"
TEMPLATE_TAG: Final = "hf:template-id"
EVENT_TAG: Final = "hf:event-id"
# EC2 takes up to 1,000 ids a call for these; smaller calls spread throttling.
BATCH: Final = 200
MAX_USER_DATA: Final = 16 * 1024
# A spot request in one of these states has had its two-minute interruption notice.
SPOT_NOTICES: Final = ("marked-for-termination", "marked-for-stop", "marked-for-hibernation")
SPOT_NOTICE_S: Final = 120.0


class LaunchRefused(Exception):
    """The template cannot be launched as it stands (a missing user-data file, say)."""


@dataclass(frozen=True)
class Order:
    """One acquire event: ``count`` machines of a template for a request."""

    cluster: str
    request_id: str
    template_id: str
    event_id: str
    count: int

    def token(self, step: int) -> str:
        """EC2's ClientToken (at most 64 ASCII characters), one per call of this event."""
        return hashlib.sha256(f"{self.event_id}#{step}".encode()).hexdigest()[:64]

    def tags(self, spec: LaunchSpec) -> list[dict[str, Any]]:
        ours = {CLUSTER_TAG: self.cluster, REQUEST_TAG: self.request_id,
                TEMPLATE_TAG: self.template_id, EVENT_TAG: self.event_id}
        pairs = [*spec.tags, *ours.items()]
        return [{"ResourceType": "instance",
                 "Tags": [{"Key": k, "Value": v} for k, v in pairs]}]


@dataclass
class Launched:
    instances: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def client_error(exc: Exception) -> str | None:
    """``Code: message`` of an EC2 refusal (botocore's ClientError), None for anything else."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    if not isinstance(error, dict):
        return None
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip()


def _user_data(spec: LaunchSpec) -> bytes | None:
    if spec.user_data_script is None:
        return None
    path = Path(spec.user_data_script)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LaunchRefused(f"userDataScript {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_USER_DATA:
        raise LaunchRefused(f"userDataScript {path} is {len(data)} bytes; EC2 takes 16 KiB")
    return data


def _root_device(ec2: Any, spec: LaunchSpec) -> list[dict[str, Any]]:
    if not spec.root_volume:
        return []
    try:
        image = ec2.describe_images(ImageIds=[spec.image_id])["Images"][0]
        device = image.get("RootDeviceName") or "/dev/xvda"
    except Exception as exc:  # an image EC2 cannot describe: it refuses the launch itself
        if client_error(exc) is None:
            raise
        device = "/dev/xvda"
    volume = {"VolumeSize": spec.root_volume.get("size"),
              "VolumeType": spec.root_volume.get("volume_type"),
              "Iops": spec.root_volume.get("iops"), "DeleteOnTermination": True}
    return [{"DeviceName": device, "Ebs": {k: v for k, v in volume.items() if v is not None}}]


def instance_data(ec2: Any, spec: LaunchSpec) -> dict[str, Any]:
    """What RunInstances and a launch template share, in RunInstances' names."""
    data: dict[str, Any] = {"ImageId": spec.image_id}
    if spec.key_name:
        data["KeyName"] = spec.key_name
    if spec.security_group_ids:
        data["SecurityGroupIds"] = list(spec.security_group_ids)
    if spec.instance_profile:
        key = "Arn" if spec.instance_profile.startswith("arn:") else "Name"
        data["IamInstanceProfile"] = {key: spec.instance_profile}
    if spec.placement_group:
        data["Placement"] = {"GroupName": spec.placement_group}
    if (devices := _root_device(ec2, spec)):
        data["BlockDeviceMappings"] = devices
    if (user_data := _user_data(spec)) is not None:
        data["UserData"] = base64.b64encode(user_data).decode()
    return data


def run_instances(ec2: Any, spec: LaunchSpec, order: Order, wanted: int) -> Launched:
    """On demand, one instance type: RunInstances, subnet after subnet. Each call asks for an
    exact number (MinCount = MaxCount); when EC2 has no capacity (or vCPU limit) for that
    many it asks for half as many, down to one, so a short pool still gives what it has."""
    base = {**instance_data(ec2, spec), "InstanceType": spec.instance_types[0],
            "TagSpecifications": order.tags(spec)}
    if "UserData" in base:  # RunInstances takes it raw (boto3 encodes it)
        base["UserData"] = base64.b64decode(base["UserData"])
    launched, step = Launched(), 0
    for subnet in spec.subnet_ids or (None,):
        ask = wanted - len(launched.instances)
        while ask > 0 and len(launched.instances) < wanted:
            call = {**base, "MinCount": ask, "MaxCount": ask, "ClientToken": order.token(step)}
            step += 1
            if subnet:
                call["SubnetId"] = subnet
            said = _run(ec2, call, launched)
            if said is None:
                ask = min(ask, wanted - len(launched.instances))
                continue
            launched.errors.append(f"{subnet or 'default subnet'}: {said}")
            if not said.startswith(SHORT_OF_CAPACITY):
                break
            ask //= 2
    return launched


# EC2's refusals that fewer instances may get past.
SHORT_OF_CAPACITY: Final = ("InsufficientInstanceCapacity", "InstanceLimitExceeded",
                            "VcpuLimitExceeded", "InsufficientCapacity")


def _run(ec2: Any, call: dict[str, Any], launched: Launched) -> str | None:
    """One RunInstances: None when it launched, else EC2's refusal."""
    try:
        launched.instances += ec2.run_instances(**call)["Instances"]
    except Exception as exc:
        if (said := client_error(exc)) is None:
            raise
        return said
    return None


def launch_template(ec2: Any, spec: LaunchSpec, order: Order) -> str:
    """The launch template a fleet of this template uses, made once: its name carries a
    digest of what it holds, so an edited template gets a new one."""
    data = instance_data(ec2, spec)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
    name = f"hf-{order.cluster}-{order.template_id}"[:110] + f"-{digest}"
    try:
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data,
                                   ClientToken=hashlib.sha256(name.encode()).hexdigest()[:64])
    except Exception as exc:
        if "AlreadyExists" not in (client_error(exc) or ""):
            raise
    return name


def create_fleet(ec2: Any, spec: LaunchSpec, order: Order, wanted: int) -> Launched:
    """Spot, a mix, or several instance types: one instant EC2 Fleet over every type and
    subnet; what it could not launch comes back in its Errors."""
    name = launch_template(ec2, spec, order)
    overrides = [{"InstanceType": t, **({"SubnetId": s} if s else {}),
                  **({"MaxPrice": spec.max_spot_price} if spec.max_spot_price else {})}
                 for t in spec.instance_types for s in (spec.subnet_ids or (None,))]
    on_demand = spec.on_demand_count(wanted)
    call: dict[str, Any] = {
        "Type": "instant", "ClientToken": order.token(0),
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": wanted, "OnDemandTargetCapacity": on_demand,
            "SpotTargetCapacity": wanted - on_demand,
            "DefaultTargetCapacityType": "on-demand" if on_demand == wanted else "spot"},
        "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {
            "LaunchTemplateName": name, "Version": "$Latest"}, "Overrides": overrides}],
        "TagSpecifications": order.tags(spec)}
    if spec.allocation_strategy:
        call["SpotOptions"] = {"AllocationStrategy": spec.allocation_strategy}
    launched = Launched()
    try:
        answer = ec2.create_fleet(**call)
    except Exception as exc:
        if (said := client_error(exc)) is None:
            raise
        launched.errors.append(said)
        return launched
    ids = [i for group in answer.get("Instances") or [] for i in group.get("InstanceIds", [])]
    launched.errors += [f"{e.get('ErrorCode')}: {e.get('ErrorMessage')}"
                        for e in answer.get("Errors") or []]
    launched.instances = list(describe(ec2, ids=ids)) if ids else []
    return launched


def describe(ec2: Any, *, ids: list[str] | None = None,
             filters: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """Instances by id (in batches) or by filter (every page)."""
    if ids is not None:
        for start in range(0, len(ids), BATCH):
            yield from describe(ec2, filters=[
                {"Name": "instance-id", "Values": ids[start:start + BATCH]}, *(filters or [])])
        return
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=filters or [], PaginationConfig={"PageSize": 1000})
    for page in pages:
        for reservation in page["Reservations"]:
            yield from reservation["Instances"]


def owned(ec2: Any, cluster: str, **tags: str) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}]
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    return list(describe(ec2, filters=filters))


def terminate(ec2: Any, cluster: str, ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Terminate those of ``ids`` this cluster owns, in batches. Returns the instances as they
    stand after the call, and the ids EC2 does not know (gone long ago, or never ours)."""
    found = {i["InstanceId"]: i for i in describe(ec2, ids=ids, filters=[
        {"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}])} if ids else {}
    alive = [i for i, inst in found.items() if inst["State"]["Name"] != "terminated"]
    for start in range(0, len(alive), BATCH):
        for change in ec2.terminate_instances(InstanceIds=alive[start:start + BATCH])[
                "TerminatingInstances"]:
            found[change["InstanceId"]]["State"] = change["CurrentState"]
    return list(found.values()), [i for i in ids if i not in found]


def spot_notices(ec2: Any, instances: list[dict[str, Any]]) -> dict[str, float]:
    """Running spot instances that have their interruption notice: instance id -> when EC2
    takes it (the notice's time + two minutes)."""
    wanted = [i["InstanceId"] for i in instances
              if i.get("InstanceLifecycle") == "spot" and i["State"]["Name"] == "running"]
    notices = {}
    for start in range(0, len(wanted), BATCH):
        answer = ec2.describe_spot_instance_requests(Filters=[
            {"Name": "instance-id", "Values": wanted[start:start + BATCH]}])
        for sir in answer.get("SpotInstanceRequests") or []:
            status = sir.get("Status") or {}
            if status.get("Code") in SPOT_NOTICES and sir.get("InstanceId"):
                noticed = status.get("UpdateTime")
                at = noticed.timestamp() if isinstance(noticed, datetime) else time.time()
                notices[sir["InstanceId"]] = at + SPOT_NOTICE_S
    return notices


def report_of(instance: dict[str, Any], reclaim_at: float | None = None,
              ) -> tuple[str, dict[str, Any]]:
    """The status and metadata an instance reports over the contract."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
    launched = instance.get("LaunchTime")
    metadata = {
        "name": instance.get("PrivateDnsName") or None,
        "private_ip": instance.get("PrivateIpAddress"),
        "public_ip": instance.get("PublicIpAddress"),
        "instance_type": instance.get("InstanceType"),
        "price_type": "spot" if instance.get("InstanceLifecycle") == "spot" else "ondemand",
        "launch_time": int(launched.timestamp()) if isinstance(launched, datetime) else None,
        # The template's tags: not EC2's own (aws:) nor the provider's (hf:).
        "instance_tags": ";".join(f"{k}={v}" for k, v in tags.items()
                                  if not k.startswith(("aws:", "hf:")))[:1024],
        "cloud_host_id": instance["InstanceId"],
        "reclaim_at": reclaim_at,
    }
    reason = (instance.get("StateReason") or {}).get("Message")
    if instance["State"]["Name"] in ("shutting-down", "terminated", "stopped") and reason:
        metadata["message"] = reason[:2000]
    return instance["State"]["Name"], {k: v for k, v in metadata.items() if v is not None}
