"""The AWS fields of a template, as administrators write them in ``awsprov_templates.json``
(IBM's AWS plugin) or in the Open Resource Broker's AWS templates, checked and turned into
what EC2 is asked for. Pure: no boto3, no I/O.

A template is an AWS template when it has ``imageId`` or ``launchTemplateId``. Every key it
holds is one the provider honours (``_READERS``), one it accepts knowing it cannot apply
(``ACCEPTED``, each with the reason, docs/templates.md), or one of HostFactory's own: any
other key refuses the template, with a did-you-mean, so a typo such as ``subnetID`` never
launches into a default subnet. ``null`` means absent, for every optional field.

Capacity is counted in *units*: a ``vmTypes`` weight is the units one instance of that type
gives (a fleet's ``WeightedCapacity``), and a request for N asks for N units.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

# HostFactory's own keys and the display keys it passes through.
HOSTFACTORY_KEYS: Final = frozenset({"templateId", "maxNumber", "attributes", "priority",
                                     "description", "name"})
PRICE_TYPES: Final = ("ondemand", "spot", "heterogeneous")
VOLUME_TYPES: Final = ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")
IOPS_VOLUME_TYPES: Final = ("gp3", "io1", "io2")
TENANCIES: Final = ("default", "dedicated", "host")
INTERFACE_TYPES: Final = ("interface", "efa", "efa-only")
# Spot Fleet spellings (what awsprov templates hold) and EC2 Fleet's own.
ALLOCATION_STRATEGIES: Final = {
    "lowestPrice": "lowest-price", "diversified": "diversified",
    "capacityOptimized": "capacity-optimized",
    "capacityOptimizedPrioritized": "capacity-optimized-prioritized",
    "priceCapacityOptimized": "price-capacity-optimized",
}
ON_DEMAND_STRATEGIES: Final = {"lowestPrice": "lowest-price", "prioritized": "prioritized"}
MAX_WEIGHT: Final = 1_000
_ID = re.compile(r"^[a-z]+-[0-9a-zA-Z]+$")
# Accepted, read, and not applied: why each cannot apply to the calls this provider makes.
ACCEPTED: Final[dict[str, str]] = {
    "fleetRole": "a Spot Fleet's role; the provider launches EC2 Fleets, which use their "
                 "service-linked role",
    "spotFleetRequestExpiry": "a Spot Fleet request's lifetime; the provider's fleets are "
                              "instant (answered at once, nothing left open to expire); the "
                              "request's own deadline (REQUEST_TIMEOUT_S) bounds the wait",
    "fleetType": "ORB's fleet kind; the provider always launches instant fleets (a "
                 "maintained fleet would replace the machines HostFactory gives back)",
    "providerApi": "ORB's choice of API; the provider chooses by priceType and types "
                   "(RunInstances for one on-demand type, else an instant EC2 Fleet)",
    "providerName": "ORB's provider instance name: display only",
    "providerType": "ORB's provider kind (aws): display only",
}


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch for one template."""

    image_id: str | None
    # Instance type -> units one instance gives; empty with instance requirements only.
    weights: tuple[tuple[str, int], ...]
    subnet_ids: tuple[str, ...]
    price_type: str = "ondemand"
    key_name: str | None = None
    security_group_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    instance_profile: str | None = None
    user_data_script: str | None = None
    root_volume: dict[str, Any] = field(default_factory=dict)
    max_spot_price: str | None = None
    allocation_strategy: str | None = None
    percent_on_demand: int = 0
    placement_group: str | None = None
    on_demand_weights: tuple[tuple[str, int], ...] = ()
    priorities: tuple[tuple[str, int], ...] = ()
    on_demand_strategy: str | None = None
    pools_count: int | None = None
    instance_requirements: dict[str, Any] | None = None
    ebs_optimized: bool | None = None
    tenancy: str | None = None
    interface_type: str | None = None
    launch_template_id: str | None = None
    launch_template_version: str | None = None
    on_demand_base: int = 0
    # The script's bytes, read where the templates file was loaded (never on the provider's
    # host: the feed event carries them).
    user_data: bytes | None = None

    @property
    def instance_types(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)

    @property
    def uses_fleet(self) -> bool:
        """Spot, a mix, several instance types or attribute-based selection: an instant EC2
        Fleet; one on-demand type: RunInstances."""
        return (self.price_type != "ondemand" or len(self.weights) != 1
                or self.instance_requirements is not None)

    @functools.cached_property
    def unit_weights(self) -> dict[str, int]:
        """Every instance type the template names (spot and on-demand) -> its units."""
        return dict(self.weights + self.on_demand_weights)

    def weight(self, instance_type: str | None) -> int:
        """The units an instance of ``instance_type`` gives (1 when the template says none)."""
        return self.unit_weights.get(instance_type or "", 1)

    def instances_for(self, units: int) -> int:
        """RunInstances' count for ``units`` of the template's one type."""
        return math.ceil(units / self.weight(self.instance_types[0])) if units > 0 else 0

    def on_demand_count(self, units: int) -> int:
        """The on-demand part of ``units``: ``onDemandCapacity`` first (an ASG's base), then
        ``percentOnDemand`` of the rest."""
        if self.price_type == "ondemand":
            return units
        base = min(self.on_demand_base, units)
        return base + round((units - base) * self.percent_on_demand / 100)


class TemplateProblems(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def present(template: dict[str, Any]) -> dict[str, Any]:
    """The template without its ``null`` fields: ``null`` means absent."""
    return {k: v for k, v in template.items() if v is not None}


def is_aws_template(template: dict[str, Any]) -> bool:
    given = present(template)
    return "imageId" in given or "launchTemplateId" in given


def problems(template: dict[str, Any]) -> list[str]:
    """Every AWS field ``template`` holds that the provider cannot honour (none: usable)."""
    try:
        launch_spec(template)
    except TemplateProblems as exc:
        return exc.problems
    return []


def known_keys() -> frozenset[str]:
    return HOSTFACTORY_KEYS | frozenset(ACCEPTED) | frozenset(_READERS)


# Other tools' names for a field (EC2's, ORB's snake_case): what a user most likely meant.
_MEANT: Final = {"instancetype": "vmType", "instancetypes": "vmTypes", "ami": "imageId",
                 "image_id": "imageId", "subnet": "subnetId", "subnet_id": "subnetId",
                 "subnet_ids": "subnetIds", "securitygroups": "securityGroupIds",
                 "security_group_ids": "securityGroupIds", "keypair": "keyName",
                 "key_name": "keyName", "tags": "instanceTags", "userdata": "userDataScript",
                 "placementgroup": "pgrpName"}


def unknown_key(key: str) -> str:
    """What is wrong with ``key``, with the field it most likely meant."""
    known = sorted(known_keys())
    folded = {k.lower(): k for k in known}
    guess = (folded.get(key.lower()) or _MEANT.get(key.lower())
             or next(iter(difflib.get_close_matches(key, known, 1, 0.75)), None))
    hint = f"; did you mean {guess!r}?" if guess else ""
    return f"{key}: not a field the AWS provider knows{hint} (docs/templates.md lists them)"


def launch_spec(template: dict[str, Any], user_data: bytes | None = None) -> LaunchSpec:
    """The launch a template asks for (``user_data``: its ``userDataScript``'s bytes, read
    when the templates file was loaded); raises ``TemplateProblems`` listing every problem."""
    given = present(template)
    found = [unknown_key(key) for key in given if key not in known_keys()]
    values: dict[str, Any] = {}
    for key, (name, read) in _READERS.items():
        if key in given:
            try:
                values[name] = read(given[key])
            except ValueError as exc:
                found.append(f"{key}: {exc}")
    found += _cross_checks(given, values)
    if found:
        raise TemplateProblems(found)
    values["subnet_ids"] = values.pop("subnet_ids", ()) or values.pop("subnet_list", ())
    values.pop("subnet_list", None)
    values["weights"] = values.pop("vm_type", None) or values.pop("vm_types", None) or ()
    values["root_volume"] = {k: values.pop(k) for k in ("size", "volume_type", "iops")
                             if k in values}
    values.setdefault("image_id", None)
    return LaunchSpec(**values, user_data=user_data)


def _cross_checks(given: dict[str, Any], values: dict[str, Any]) -> list[str]:
    found = []
    if "imageId" not in given and "launchTemplateId" not in given:
        found.append("imageId: required (or launchTemplateId, whose image is used)")
    types = ("vmType" in given) + ("vmTypes" in given)
    if types > 1 or (types == 0 and "abisInstanceRequirements" not in given):
        found.append("vmType or vmTypes: exactly one is required (or "
                     "abisInstanceRequirements)")
    if "subnetId" in given and "subnetIds" in given:
        found.append("subnetId and subnetIds: give one of them")
    price = values.get("price_type", "ondemand")
    found += _price_checks(given, values, price)
    if "iops" in values and values.get("volume_type") not in IOPS_VOLUME_TYPES:
        found.append(f"iops: only with volumeType {', '.join(IOPS_VOLUME_TYPES)}")
    if "launchTemplateVersion" in given and "launchTemplateId" not in given:
        found.append("launchTemplateVersion: only with launchTemplateId")
    return found


def _price_checks(given: dict[str, Any], values: dict[str, Any], price: str) -> list[str]:
    found = []
    spot_only = ("maxSpotPrice", "allocationStrategy", "percentOnDemand", "poolsCount",
                 "allocationStrategyOnDemand")
    if price == "ondemand":
        found += [f"{key}: only for priceType spot or heterogeneous"
                  for key in spot_only if key in given]
    if "vmTypesOnDemand" in given and price != "heterogeneous":
        found.append("vmTypesOnDemand: only for priceType heterogeneous")
    if price != "ondemand" and not (values.get("subnet_ids") or values.get("subnet_list")):
        found.append("subnetId: required for spot and heterogeneous (the fleet's pools)")
    if "pools_count" in values and values.get("allocation_strategy") not in (
            None, "lowest-price"):
        found.append("poolsCount: only with allocationStrategy lowestPrice")
    if "vmTypesPriority" in given:
        listed = set(dict(values.get("vm_types") or values.get("vm_type") or ()))
        listed |= set(dict(values.get("on_demand_weights") or ()))
        stray = sorted(set(dict(values.get("priorities") or ())) - listed)
        if stray:
            found.append(f"vmTypesPriority: {', '.join(stray)} not among the template's types")
    return found


def _text(value: Any, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    if pattern is not None and not pattern.match(value.strip()):
        raise ValueError(f"{value[:60]!r} is not an AWS id (like subnet-0abc…)")
    return value.strip()


def _ids(value: Any) -> tuple[str, ...]:
    """One id, several comma-separated (awsprov's form), or a list."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("must be an id, ids separated by commas, or a list of ids")
    return tuple(_text(item, _ID) for item in items)


def _weights(value: Any) -> tuple[tuple[str, int], ...]:
    """``{"m5.large": 1, "m5.2xlarge": 4}``: instance type -> the units one instance gives."""
    if not isinstance(value, dict) or not value:
        raise ValueError('must be an object of instance type -> weight, e.g. {"m5.large": 1}')
    pairs = []
    for name, weight in value.items():
        _text(name)
        if isinstance(weight, bool) or not isinstance(weight, int) or not (
                1 <= weight <= MAX_WEIGHT):
            raise ValueError(f"{name}: weight {weight!r}: the units one instance gives, a "
                             f"whole number from 1 to {MAX_WEIGHT}")
        pairs.append((name, weight))
    return tuple(pairs)


def _priorities(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict) or not value:
        raise ValueError('must be an object of instance type -> priority, e.g. {"m5.large": 1}')
    for name, priority in value.items():
        if isinstance(priority, bool) or not isinstance(priority, int | float) or priority < 0:
            raise ValueError(f"{name}: priority {priority!r} must be a number ≥ 0 (lower "
                             "launches first)")
    return tuple((str(k), int(v)) for k, v in value.items())


def _choice(options: tuple[str, ...]) -> Any:
    def read(value: Any) -> str:
        if value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return str(value)
    return read


def _whole(low: int, high: int) -> Any:
    def read(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value
    return read


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("must be true or false")


def _tags(value: Any) -> tuple[tuple[str, str], ...]:
    """``k=v;k=v``, HostFactory's form."""
    if not isinstance(value, str):
        raise ValueError('must be "key=value;key=value"')
    pairs = []
    for item in filter(None, (p.strip() for p in value.split(";"))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or key.strip().startswith(("aws:", "hf:")):
            raise ValueError(f"{item!r}: each tag is key=value; keys starting aws: or hf: "
                             "are reserved")
        pairs.append((key.strip(), val.strip()))
    return tuple(pairs)


def _price(value: Any) -> str:
    try:
        price = float(value)
    except (TypeError, ValueError):
        price = -1.0
    if isinstance(value, bool) or not price > 0 or not math.isfinite(price):
        raise ValueError("must be a positive price in USD per hour, e.g. 0.25")
    return f"{price:g}"


def _strategy(options: dict[str, str]) -> Any:
    def read(value: Any) -> str:
        if value in options.values():
            return str(value)
        if value in options:
            return options[value]
        raise ValueError(f"{value!r} is not one of {', '.join(options)}")
    return read


def _version(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and (value.isdigit() or value in ("$Latest", "$Default")):
        return value
    raise ValueError("must be a version number, $Latest or $Default")


def _requirements(value: Any) -> dict[str, Any]:
    """EC2's InstanceRequirementsRequest, in its own (PascalCase) or camelCase spelling;
    VCpuCount and MemoryMiB (each with Min) are required, as EC2 requires them."""
    if not isinstance(value, dict) or not value:
        raise ValueError('must be an object like {"VCpuCount": {"Min": 2}, '
                         '"MemoryMiB": {"Min": 4096}}')
    converted = _pascal(value)
    assert isinstance(converted, dict)
    for name in ("VCpuCount", "MemoryMiB"):
        part = converted.get(name)
        if not isinstance(part, dict) or not isinstance(part.get("Min"), int):
            raise ValueError(f"{name}: required, with a whole-number Min")
    return converted


def _pascal(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k)[:1].upper() + str(k)[1:]: _pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_pascal(v) for v in value]
    return value


# Template key -> (LaunchSpec field, reader raising ValueError).
_READERS: Final[dict[str, tuple[str, Any]]] = {
    "imageId": ("image_id", lambda v: _text(v, _ID)),
    "launchTemplateId": ("launch_template_id", lambda v: _text(v, _ID)),
    "launchTemplateVersion": ("launch_template_version", _version),
    "subnetId": ("subnet_ids", _ids),
    "subnetIds": ("subnet_list", _ids),
    "vmType": ("vm_type", lambda v: ((_text(v), 1),)),
    "vmTypes": ("vm_types", _weights),
    "vmTypesOnDemand": ("on_demand_weights", _weights),
    "vmTypesPriority": ("priorities", _priorities),
    "abisInstanceRequirements": ("instance_requirements", _requirements),
    "priceType": ("price_type", _choice(PRICE_TYPES)),
    "keyName": ("key_name", _text),
    "securityGroupIds": ("security_group_ids", _ids),
    "instanceTags": ("tags", _tags),
    "instanceProfile": ("instance_profile", _text),
    "userDataScript": ("user_data_script", _text),
    "rootDeviceVolumeSize": ("size", _whole(1, 16_384)),
    "volumeType": ("volume_type", _choice(VOLUME_TYPES)),
    "iops": ("iops", _whole(100, 256_000)),
    "maxSpotPrice": ("max_spot_price", _price),
    "allocationStrategy": ("allocation_strategy", _strategy(ALLOCATION_STRATEGIES)),
    "allocationStrategyOnDemand": ("on_demand_strategy", _strategy(ON_DEMAND_STRATEGIES)),
    "percentOnDemand": ("percent_on_demand", _whole(0, 100)),
    "onDemandCapacity": ("on_demand_base", _whole(0, 10_000)),
    "poolsCount": ("pools_count", _whole(1, 1_000)),
    "pgrpName": ("placement_group", _text),
    "ebsOptimized": ("ebs_optimized", _flag),
    "tenancy": ("tenancy", _choice(TENANCIES)),
    "interfaceType": ("interface_type", _choice(INTERFACE_TYPES)),
}
