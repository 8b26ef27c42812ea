"""The AWS fields of a template, as administrators write them in ``awsprov_templates.json``,
checked and turned into what EC2 is asked for. Pure: no boto3, no I/O.

A template is an AWS template when it has ``imageId``. Every key it holds must be one the
provider honours (or one of HostFactory's own): a field it cannot honour is a problem when the
templates file is loaded, not a surprise at launch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

# HostFactory's own keys and the display keys it passes through.
HOSTFACTORY_KEYS: Final = frozenset({"templateId", "maxNumber", "attributes", "priority",
                                     "description"})
PRICE_TYPES: Final = ("ondemand", "spot", "heterogeneous")
VOLUME_TYPES: Final = ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard")
IOPS_VOLUME_TYPES: Final = ("gp3", "io1", "io2")
# Spot Fleet spellings (what awsprov templates hold) and EC2 Fleet's own.
ALLOCATION_STRATEGIES: Final = {
    "lowestPrice": "lowest-price", "diversified": "diversified",
    "capacityOptimized": "capacity-optimized",
    "capacityOptimizedPrioritized": "capacity-optimized-prioritized",
    "priceCapacityOptimized": "price-capacity-optimized",
}
_ID = re.compile(r"^[a-z]+-[0-9a-zA-Z]+$")
# fleetRole: a Spot Fleet setting; an EC2 Fleet uses its service-linked role, so it is read
# and not needed. Kept accepted so that existing files load.
IGNORED_KEYS: Final = frozenset({"fleetRole"})


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch for one template."""

    image_id: str
    instance_types: tuple[str, ...]
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

    @property
    def uses_fleet(self) -> bool:
        """Spot, a mix, or several instance types: an instant EC2 Fleet; else RunInstances."""
        return self.price_type != "ondemand" or len(self.instance_types) > 1

    def on_demand_count(self, count: int) -> int:
        if self.price_type == "ondemand":
            return count
        if self.price_type == "spot":
            return 0
        return round(count * self.percent_on_demand / 100)


class TemplateProblems(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def is_aws_template(template: dict[str, Any]) -> bool:
    return "imageId" in template


def problems(template: dict[str, Any]) -> list[str]:
    """Every AWS field ``template`` holds that the provider cannot honour (none: usable)."""
    try:
        launch_spec(template)
    except TemplateProblems as exc:
        return exc.problems
    return []


def launch_spec(template: dict[str, Any]) -> LaunchSpec:
    """The launch a template asks for; raises ``TemplateProblems`` listing every problem."""
    found: list[str] = []
    known = HOSTFACTORY_KEYS | IGNORED_KEYS | set(_READERS)
    found += [f"{key}: not a field the AWS provider honours (fields: "
              f"{', '.join(sorted(_READERS))})" for key in template if key not in known]
    values: dict[str, Any] = {}
    for key, (name, read) in _READERS.items():
        if key in template:
            try:
                values[name] = read(template[key])
            except ValueError as exc:
                found.append(f"{key}: {exc}")
    found += _cross_checks(template, values)
    if found:
        raise TemplateProblems(found)
    values.setdefault("subnet_ids", ())
    values["instance_types"] = values.pop("vm_type", None) or values.pop("vm_types", None)
    values["root_volume"] = {k: values.pop(k) for k in ("size", "volume_type", "iops")
                             if k in values}
    return LaunchSpec(**values)


def _cross_checks(template: dict[str, Any], values: dict[str, Any]) -> list[str]:
    found = []
    if "imageId" not in template:
        found.append("imageId: required")
    if ("vmType" in template) == ("vmTypes" in template):
        found.append("vmType or vmTypes: exactly one is required")
    price = values.get("price_type", "ondemand")
    if "percent_on_demand" in values and price != "heterogeneous":
        found.append("percentOnDemand: only for priceType heterogeneous")
    if price == "ondemand" and ("max_spot_price" in values or "allocation_strategy" in values):
        found.append("maxSpotPrice and allocationStrategy: only for spot or heterogeneous")
    if price != "ondemand" and not values.get("subnet_ids"):
        found.append("subnetId: required for spot and heterogeneous (the fleet's pools)")
    if "iops" in values and values.get("volume_type") not in IOPS_VOLUME_TYPES:
        found.append(f"iops: only with volumeType {', '.join(IOPS_VOLUME_TYPES)}")
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


def _vm_types(value: Any) -> tuple[str, ...]:
    if not isinstance(value, dict) or not value:
        raise ValueError('must be an object of instance type -> weight, e.g. {"m5.large": 1}')
    for name, weight in value.items():
        _text(name)
        if weight != 1 or isinstance(weight, bool):
            raise ValueError(f"{name}: weight {weight!r}: HostFactory counts machines, so each "
                             "instance must count as one; give every type weight 1 and say "
                             "its size in attributes (ncpus, nram)")
    return tuple(value)


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
    if isinstance(value, bool) or price <= 0:
        raise ValueError("must be a positive price in USD per hour, e.g. 0.25")
    return f"{price:g}"


def _strategy(value: Any) -> str:
    if value in ALLOCATION_STRATEGIES.values():
        return str(value)
    if value in ALLOCATION_STRATEGIES:
        return ALLOCATION_STRATEGIES[value]
    raise ValueError(f"{value!r} is not one of {', '.join(ALLOCATION_STRATEGIES)}")


# Template key -> (LaunchSpec field, reader raising ValueError).
_READERS: Final[dict[str, tuple[str, Any]]] = {
    "imageId": ("image_id", lambda v: _text(v, _ID)),
    "subnetId": ("subnet_ids", _ids),
    "vmType": ("vm_type", lambda v: (_text(v),)),
    "vmTypes": ("vm_types", _vm_types),
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
    "allocationStrategy": ("allocation_strategy", _strategy),
    "percentOnDemand": ("percent_on_demand", _whole(0, 100)),
    "pgrpName": ("placement_group", _text),
}
