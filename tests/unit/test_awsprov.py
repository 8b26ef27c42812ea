"""AWS template fields: what administrators write in awsprov_templates.json, checked before
anything is launched."""

from __future__ import annotations

from typing import Any

import pytest

from commands_worker.adapters.templates_file import TemplatesFileError, parse_templates
from shared import awsprov

BASE: dict[str, Any] = {"templateId": "t", "maxNumber": 5,
                        "attributes": {"type": "X86_64", "ncpus": 2, "nram": 4096},
                        "imageId": "ami-0abc123", "vmType": "m5.large"}


def test_a_full_heterogeneous_template_becomes_one_launch() -> None:
    template = {**BASE, "priceType": "heterogeneous", "percentOnDemand": 40,
                "subnetId": "subnet-aaa1,subnet-bbb2", "securityGroupIds": ["sg-1a"],
                "keyName": "ops", "instanceTags": "team=hpc; cost=grid", "fleetRole": "arn:x",
                "instanceProfile": "arn:aws:iam::1:instance-profile/hf",
                "rootDeviceVolumeSize": 50, "volumeType": "gp3", "iops": 4000,
                "maxSpotPrice": "0.12", "allocationStrategy": "capacityOptimized",
                "pgrpName": "hpc", "vmTypes": {"m5.large": 1, "m5a.large": 1}}
    del template["vmType"]
    spec = awsprov.launch_spec(template)
    assert spec.uses_fleet and spec.instance_types == ("m5.large", "m5a.large")
    assert spec.subnet_ids == ("subnet-aaa1", "subnet-bbb2")
    assert spec.tags == (("team", "hpc"), ("cost", "grid"))
    assert spec.allocation_strategy == "capacity-optimized" and spec.max_spot_price == "0.12"
    assert spec.root_volume == {"size": 50, "volume_type": "gp3", "iops": 4000}
    assert spec.on_demand_count(10) == 4


def test_one_on_demand_type_launches_with_run_instances() -> None:
    spec = awsprov.launch_spec(BASE)
    assert not spec.uses_fleet and spec.on_demand_count(3) == 3 and spec.subnet_ids == ()


@pytest.mark.parametrize(("change", "problem"), [
    ({"instanceType": "m5.large"}, "instanceType: not a field the AWS provider honours"),
    ({"vmTypes": {"m5.large": 2}}, "HostFactory counts machines"),
    ({"vmTypes": {"m5.large": 1}}, "exactly one is required"),
    ({"priceType": "reserved"}, "'reserved' is not one of ondemand, spot, heterogeneous"),
    ({"priceType": "spot"}, "subnetId: required for spot"),
    ({"subnetId": "subnet_1"}, "is not an AWS id"),
    ({"percentOnDemand": 50}, "only for priceType heterogeneous"),
    ({"maxSpotPrice": "cheap"}, "positive price"),
    ({"iops": 3000}, "only with volumeType"),
    ({"instanceTags": "team"}, "each tag is key=value"),
    ({"instanceTags": "hf:request=x"}, "reserved"),
    ({"allocationStrategy": "random"}, "is not one of"),
    ({"rootDeviceVolumeSize": "50"}, "whole number"),
])
def test_a_field_the_provider_cannot_honour_is_named(change: dict[str, Any],
                                                      problem: str) -> None:
    found = awsprov.problems({**BASE, **change})
    assert any(problem in p for p in found), found


def test_the_templates_file_refuses_an_aws_template_it_could_not_launch() -> None:
    document = {"templates": [BASE, {**BASE, "templateId": "u", "vmTypes": {"c5.xlarge": 4}}]}
    with pytest.raises(TemplatesFileError) as caught:
        parse_templates(document, "awsprov_templates.json")
    problems = caught.value.problems
    assert all(p.startswith("awsprov_templates.json: templates[1] (u): ") for p in problems)
    assert any("c5.xlarge: weight 4" in p for p in problems), problems
    # A template without imageId is not an AWS template: its keys are the provider's own.
    other = {k: v for k, v in BASE.items() if k not in ("imageId", "vmType")}
    assert parse_templates({"templates": [{**other, "flavor": "x"}]})
