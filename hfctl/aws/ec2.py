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
from typing import Any, Final

from shared.awsprov import LaunchSpec
from shared.hostfactory import GONE_OR_GOING

CLUSTER_TAG: Final = "hf:cluster"
REQUEST_TAG: Final = "hf:request-id"
TEMPLATE_TAG: Final = "hf:template-id"
EVENT_TAG: Final = "hf:event-id"
# The template's weights ("m5.large=1,m5.2xlarge=4"), when any is not 1: what an instance
# counts for, read back from EC2 itself after a restart.
UNITS_TAG: Final = "hf:units"
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
        weights = spec.unit_weights
        if any(w != 1 for w in weights.values()):
            pairs.append((UNITS_TAG, ",".join(f"{t}={w}" for t, w in weights.items())[:256]))
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
    """The script's bytes as the feed event carried them (read and bounded where the
    templates file was loaded: the provider never opens a file an event names)."""
    if spec.user_data_script is None:
        return None
    if spec.user_data is None:
        raise LaunchRefused("userDataScript: the event carries no script (a worker older than "
                            "this provider, or the file could not be read when loaded)")
    if len(spec.user_data) > MAX_USER_DATA:
        raise LaunchRefused(f"userDataScript is {len(spec.user_data)} bytes; EC2 takes 16 KiB")
    return spec.user_data


def _admin_template_data(ec2: Any, spec: LaunchSpec) -> dict[str, Any]:
    """The data of the administrator's launch template version (``launchTemplateId``)."""
    if not spec.launch_template_id:
        return {}
    found = ec2.describe_launch_template_versions(
        LaunchTemplateId=spec.launch_template_id,
        Versions=[spec.launch_template_version or "$Default"])
    data: dict[str, Any] = found["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    return data


def _root_device(ec2: Any, spec: LaunchSpec) -> list[dict[str, Any]]:
    if not spec.root_volume:
        return []
    # The root device is the image's: the template's own, else its launch template's.
    image_id = spec.image_id or _admin_template_data(ec2, spec).get("ImageId")
    try:
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        device = image.get("RootDeviceName") or "/dev/xvda"
    except Exception as exc:  # an image EC2 cannot describe: it refuses the launch itself
        if client_error(exc) is None and image_id is not None:
            raise
        device = "/dev/xvda"
    volume = {"VolumeSize": spec.root_volume.get("size"),
              "VolumeType": spec.root_volume.get("volume_type"),
              "Iops": spec.root_volume.get("iops"), "DeleteOnTermination": True}
    return [{"DeviceName": device, "Ebs": {k: v for k, v in volume.items() if v is not None}}]


def instance_data(ec2: Any, spec: LaunchSpec) -> dict[str, Any]:
    """What RunInstances and a launch template share, in RunInstances' names."""
    data: dict[str, Any] = {}
    if spec.image_id:
        data["ImageId"] = spec.image_id
    if spec.key_name:
        data["KeyName"] = spec.key_name
    if spec.interface_type:
        # An EFA (or a plain interface): the security groups go on the interface.
        data["NetworkInterfaces"] = [{"DeviceIndex": 0, "InterfaceType": spec.interface_type,
                                      **({"Groups": list(spec.security_group_ids)}
                                         if spec.security_group_ids else {})}]
    elif spec.security_group_ids:
        data["SecurityGroupIds"] = list(spec.security_group_ids)
    if spec.instance_profile:
        key = "Arn" if spec.instance_profile.startswith("arn:") else "Name"
        data["IamInstanceProfile"] = {key: spec.instance_profile}
    placement = {"GroupName": spec.placement_group, "Tenancy": spec.tenancy}
    if any(placement.values()):
        data["Placement"] = {k: v for k, v in placement.items() if v}
    if spec.ebs_optimized is not None:
        data["EbsOptimized"] = spec.ebs_optimized
    if (devices := _root_device(ec2, spec)):
        data["BlockDeviceMappings"] = devices
    if (user_data := _user_data(spec)) is not None:
        data["UserData"] = base64.b64encode(user_data).decode()
    return data


def run_instances(ec2: Any, spec: LaunchSpec, order: Order, wanted: int) -> Launched:
    """On demand, one instance type: RunInstances, subnet after subnet, for ``wanted`` units
    (instances of the type's weight). Each call asks for an exact number (MinCount =
    MaxCount); when EC2 has no capacity (or vCPU limit) for that many it asks for half as
    many, down to one, so a short pool still gives what it has."""
    base = {**instance_data(ec2, spec), "InstanceType": spec.instance_types[0],
            "TagSpecifications": order.tags(spec)}
    if spec.launch_template_id:  # the administrator's template; the fields above override it
        base["LaunchTemplate"] = {"LaunchTemplateId": spec.launch_template_id,
                                  "Version": spec.launch_template_version or "$Default"}
    if "UserData" in base:  # RunInstances takes it raw (boto3 encodes it)
        base["UserData"] = base64.b64decode(base["UserData"])
    count = spec.instances_for(wanted)
    launched, step = Launched(), 0
    for subnet in spec.subnet_ids or (None,):
        ask = count - len(launched.instances)
        while ask > 0 and len(launched.instances) < count:
            call = {**base, "MinCount": ask, "MaxCount": ask, "ClientToken": order.token(step)}
            step += 1
            _place(call, subnet)
            said = _run(ec2, call, launched)
            if said is None:
                ask = min(ask, count - len(launched.instances))
                continue
            launched.errors.append(f"{subnet or 'default subnet'}: {said}")
            if not said.startswith(SHORT_OF_CAPACITY):
                break
            ask //= 2
    return launched


def _place(call: dict[str, Any], subnet: str | None) -> None:
    if subnet and "NetworkInterfaces" in call:
        call["NetworkInterfaces"] = [{**call["NetworkInterfaces"][0], "SubnetId": subnet}]
    elif subnet:
        call["SubnetId"] = subnet


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
    digest of what it holds, so an edited template gets a new one. With the administrator's
    own ``launchTemplateId``, its data is the base and the template's fields override it."""
    data = {**_admin_template_data(ec2, spec), **instance_data(ec2, spec)}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()
                            ).hexdigest()[:12]
    name = f"hf-{order.cluster}-{order.template_id}"[:110] + f"-{digest}"
    try:
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data,
                                   ClientToken=hashlib.sha256(name.encode()).hexdigest()[:64])
    except Exception as exc:
        if "AlreadyExists" not in (client_error(exc) or ""):
            raise
    return name


def units_of(spec: LaunchSpec, instances: list[dict[str, Any]]) -> int:
    return sum(spec.weight(i.get("InstanceType")) for i in instances)


def create_fleet(ec2: Any, spec: LaunchSpec, order: Order, wanted: int) -> Launched:
    """Spot, a mix, several types or attribute-based selection: instant EC2 Fleets over every
    type (with its weight) and subnet, for ``wanted`` units. Spot: one fleet, its on-demand
    share per ``onDemandCapacity`` and ``percentOnDemand``. Heterogeneous (IBM's meaning):
    spot first, then on demand (over ``vmTypesOnDemand`` when given) for what spot did not
    fill. What a fleet could not launch comes back in its Errors."""
    name = launch_template(ec2, spec, order)
    on_demand = spec.on_demand_count(wanted)
    if spec.price_type != "heterogeneous":
        return _fleet(ec2, spec, order, name, (wanted - on_demand, on_demand), 0)
    launched = (_fleet(ec2, spec, order, name, (wanted - on_demand, 0), 0)
                if wanted > on_demand else Launched())
    rest = wanted - units_of(spec, launched.instances)
    if rest > 0:
        more = _fleet(ec2, spec, order, name, (0, rest), 1)
        launched.instances += more.instances
        launched.errors += more.errors
    return launched


def _overrides(spec: LaunchSpec, on_demand_only: bool) -> list[dict[str, Any]]:
    weights = (spec.on_demand_weights or spec.weights) if on_demand_only else spec.weights
    priorities = dict(spec.priorities)
    price = {"MaxPrice": spec.max_spot_price} if spec.max_spot_price else {}
    subnets = spec.subnet_ids or (None,)
    if spec.instance_requirements is not None and not weights:
        return [{"InstanceRequirements": spec.instance_requirements,
                 **({"SubnetId": s} if s else {}), **price} for s in subnets]
    return [{"InstanceType": t, "WeightedCapacity": float(w),
             **({"Priority": float(priorities[t])} if t in priorities else {}),
             **({"SubnetId": s} if s else {}), **price}
            for t, w in weights for s in subnets]


def _fleet(ec2: Any, spec: LaunchSpec, order: Order, template_name: str,
           capacity: tuple[int, int], step: int) -> Launched:
    spot, on_demand = capacity
    call: dict[str, Any] = {
        "Type": "instant", "ClientToken": order.token(step),
        "TargetCapacitySpecification": {
            "TotalTargetCapacity": spot + on_demand, "OnDemandTargetCapacity": on_demand,
            "SpotTargetCapacity": spot,
            "DefaultTargetCapacityType": "spot" if spot else "on-demand"},
        "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {
            "LaunchTemplateName": template_name, "Version": "$Latest"},
            "Overrides": _overrides(spec, on_demand_only=spot == 0)}],
        "TagSpecifications": order.tags(spec)}
    spot_options = {"AllocationStrategy": spec.allocation_strategy,
                    "InstancePoolsToUseCount": spec.pools_count}
    if spot and any(spot_options.values()):
        call["SpotOptions"] = {k: v for k, v in spot_options.items() if v}
    if on_demand and spec.on_demand_strategy:
        call["OnDemandOptions"] = {"AllocationStrategy": spec.on_demand_strategy}
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
        yield from _batched(ec2, "instance-id", ids, filters or [])
        return
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=filters or [], PaginationConfig={"PageSize": 1000})
    for page in pages:
        for reservation in page["Reservations"]:
            yield from reservation["Instances"]


def _batched(ec2: Any, name: str, values: list[str],
             filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Instances whose ``name`` is one of ``values``, 200 values a call (EC2 bounds a
    filter's values)."""
    for start in range(0, len(values), BATCH):
        yield from describe(ec2, filters=[
            {"Name": name, "Values": values[start:start + BATCH]}, *filters])


def _mine(cluster: str) -> dict[str, Any]:
    return {"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]}


# Every state but terminated: what a follow pass lists after its first.
NOT_TERMINATED: Final = ("pending", "running", "shutting-down", "stopping", "stopped")


def owned(ec2: Any, cluster: str) -> list[dict[str, Any]]:
    """Every instance of the cluster EC2 lists (terminated ones too, for an hour)."""
    return list(describe(ec2, filters=[_mine(cluster)]))


def owned_by_tag(ec2: Any, cluster: str, tag: str, values: list[str]) -> list[dict[str, Any]]:
    """The cluster's instances whose ``tag`` is one of ``values``."""
    return list(_batched(ec2, f"tag:{tag}", values, [_mine(cluster)]))


def owned_alive(ec2: Any, cluster: str) -> list[dict[str, Any]]:
    """The cluster's instances that are not terminated."""
    return list(describe(ec2, filters=[
        _mine(cluster), {"Name": "instance-state-name", "Values": list(NOT_TERMINATED)}]))


def owned_by_ids(ec2: Any, cluster: str, ids: list[str]) -> list[dict[str, Any]]:
    """Those of ``ids`` this cluster owns, as they stand."""
    return list(describe(ec2, ids=ids, filters=[_mine(cluster)]))


def terminate(ec2: Any, cluster: str, ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Terminate those of ``ids`` this cluster owns, in batches. Returns the instances as they
    stand after the call, and the ids EC2 does not know (gone long ago, or never ours)."""
    found = {i["InstanceId"]: i for i in owned_by_ids(ec2, cluster, ids)} if ids else {}
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


def units(tags: dict[str, str], instance_type: str | None) -> int | None:
    """The units an instance counts for, from its ``hf:units`` tag; None: one (the default)."""
    for pair in tags.get(UNITS_TAG, "").split(","):
        name, _, weight = pair.partition("=")
        if name == instance_type and weight.isdigit() and int(weight) > 1:
            return int(weight)
    return None


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
        "units": units(tags, instance.get("InstanceType")),
    }
    reason = (instance.get("StateReason") or {}).get("Message")
    if instance["State"]["Name"] in GONE_OR_GOING and reason:
        metadata["message"] = reason[:2000]
    return instance["State"]["Name"], {k: v for k, v in metadata.items() if v is not None}
