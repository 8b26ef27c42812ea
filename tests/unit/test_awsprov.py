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
    ({"instanceType": "m5.large"}, "instanceType: not a field the AWS provider knows; did "
                                   "you mean 'vmType'?"),
    ({"vmTypes": {"m5.large": 0}, "vmType": None}, "m5.large: weight 0: the units"),
    ({"vmTypes": {"m5.large": 1.5}, "vmType": None}, "weight 1.5"),
    ({"vmTypes": {"m5.large": 1}}, "exactly one is required"),
    ({"subnetID": "subnet-1a"}, "subnetID: not a field the AWS provider knows; did you mean "
                                "'subnetId'?"),
    ({"imageID": "ami-1a"}, "did you mean 'imageId'?"),
    ({"instanceProfle": "hf"}, "did you mean 'instanceProfile'?"),
    ({"flavour": "big"}, "flavour: not a field the AWS provider knows (docs"),
    ({"subnetIds": ["subnet-1a"], "subnetId": "subnet-2b"}, "give one of them"),
    ({"tenancy": "shared"}, "'shared' is not one of default, dedicated, host"),
    ({"interfaceType": "fast"}, "is not one of interface, efa"),
    ({"ebsOptimized": "yes"}, "true or false"),
    ({"launchTemplateVersion": 3}, "only with launchTemplateId"),
    ({"priceType": "spot", "subnetId": "subnet-1a", "poolsCount": 2,
      "allocationStrategy": "capacityOptimized"}, "poolsCount: only with allocationStrategy"),
    ({"vmTypesOnDemand": {"m5.large": 1}}, "vmTypesOnDemand: only for priceType heterogeneous"),
    ({"vmTypesPriority": {"c5.large": 1}}, "c5.large not among the template's types"),
    ({"abisInstanceRequirements": {"VCpuCount": {"Min": 2}}, "vmType": None},
     "MemoryMiB: required"),
    ({"priceType": "reserved"}, "'reserved' is not one of ondemand, spot, heterogeneous"),
    ({"priceType": "spot"}, "subnetId: required for spot"),
    ({"subnetId": "subnet_1"}, "is not an AWS id"),
    ({"percentOnDemand": 50}, "percentOnDemand: only for priceType spot or heterogeneous"),
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


def test_one_bad_aws_template_is_left_out_alone() -> None:
    document = {"templates": [BASE, {**BASE, "templateId": "u", "vmTypes": {"c5.xlarge": 0},
                                     "vmType": None}]}
    loaded = parse_templates(document, "awsprov_templates.json")
    assert [t.template_id for t in loaded.templates] == ["t"]
    problems = loaded.problems()
    assert all(p.startswith("awsprov_templates.json: templates[1] (u): ") for p in problems)
    assert any("c5.xlarge: weight 0" in p for p in problems), problems
    # A template without imageId is not an AWS template: its keys are the provider's own.
    other = {k: v for k, v in BASE.items() if k not in ("imageId", "vmType")}
    assert parse_templates({"templates": [{**other, "flavor": "x"}]}).templates
    with pytest.raises(TemplatesFileError, match="no usable template"):
        parse_templates({"templates": [document["templates"][1]]})


# Every field of IBM's awsprov_templates.json reference and of ORB's AWS templates: each is
# honoured (it reaches the launch spec) or accepted with the reason it cannot apply.
EVERY_FIELD: dict[str, Any] = {
    "templateId": "every", "maxNumber": 10, "attributes": BASE["attributes"],
    "priority": 5, "description": "all of it", "name": "Every field",
    "imageId": "ami-0abc123", "launchTemplateId": "lt-0abc123", "launchTemplateVersion": 3,
    "subnetIds": ["subnet-aaa1", "subnet-bbb2"], "securityGroupIds": ["sg-1a"],
    "vmTypes": {"m5.large": 1, "m5.2xlarge": 4}, "vmTypesOnDemand": {"m5.large": 1},
    "vmTypesPriority": {"m5.large": 1, "m5.2xlarge": 2}, "priceType": "heterogeneous",
    "percentOnDemand": 25, "onDemandCapacity": 2, "allocationStrategy": "lowestPrice",
    "allocationStrategyOnDemand": "prioritized", "poolsCount": 2, "maxSpotPrice": 0.5,
    "keyName": "ops", "instanceTags": "team=hpc", "instanceProfile": "hf-node",
    "userDataScript": "/opt/hf/boot.sh", "rootDeviceVolumeSize": 100, "volumeType": "io2",
    "iops": 3000, "pgrpName": "hpc-cluster", "ebsOptimized": True, "tenancy": "dedicated",
    "interfaceType": "efa", "fleetRole": "arn:aws:iam::1:role/fleet",
    "spotFleetRequestExpiry": 40, "fleetType": "instant", "providerApi": "EC2Fleet",
    "providerName": "aws-east", "providerType": "aws",
}


def test_every_documented_field_is_honoured_or_accepted_with_its_reason() -> None:
    spec = awsprov.launch_spec(EVERY_FIELD, user_data=b"#!/bin/sh\n")
    assert spec.weights == (("m5.large", 1), ("m5.2xlarge", 4))
    assert spec.on_demand_weights == (("m5.large", 1),)
    assert spec.priorities == (("m5.large", 1), ("m5.2xlarge", 2))
    assert spec.subnet_ids == ("subnet-aaa1", "subnet-bbb2")
    assert (spec.launch_template_id, spec.launch_template_version) == ("lt-0abc123", "3")
    assert (spec.allocation_strategy, spec.on_demand_strategy) == ("lowest-price",
                                                                   "prioritized")
    assert (spec.pools_count, spec.max_spot_price, spec.placement_group) == (
        2, "0.5", "hpc-cluster")
    assert (spec.ebs_optimized, spec.tenancy, spec.interface_type) == (True, "dedicated",
                                                                       "efa")
    assert spec.root_volume == {"size": 100, "volume_type": "io2", "iops": 3000}
    assert spec.user_data == b"#!/bin/sh\n"
    # onDemandCapacity is the base, percentOnDemand a share of the rest: 2 + 25 % of 8.
    assert spec.on_demand_count(10) == 4 and spec.on_demand_count(1) == 1
    assert spec.weight("m5.2xlarge") == 4 and spec.weight("t3.nano") == 1
    honoured_or_accepted = awsprov.known_keys()
    assert set(EVERY_FIELD) <= honoured_or_accepted
    for key in ("fleetRole", "spotFleetRequestExpiry", "fleetType", "providerApi"):
        assert awsprov.ACCEPTED[key]  # a reason, said in docs/templates.md too


def test_null_is_absent_in_every_field() -> None:
    nulls = {k: None for k in EVERY_FIELD if k not in (
        "templateId", "maxNumber", "attributes", "imageId", "vmTypes")}
    spec = awsprov.launch_spec({**EVERY_FIELD, **nulls})
    assert spec.price_type == "ondemand" and spec.subnet_ids == () and spec.tags == ()
    assert spec.launch_template_id is None and spec.on_demand_count(7) == 7
    assert awsprov.is_aws_template({"launchTemplateId": "lt-1a", "imageId": None})
    assert not awsprov.is_aws_template({"imageId": None})


def test_weighted_types_count_units() -> None:
    spec = awsprov.launch_spec({**BASE, "vmType": None, "vmTypes": {"m5.2xlarge": 4}})
    assert not spec.uses_fleet and spec.instances_for(10) == 3 and spec.instances_for(4) == 1
    abis = awsprov.launch_spec({**BASE, "vmType": None, "abisInstanceRequirements": {
        "vCpuCount": {"min": 2, "max": 8}, "memoryMiB": {"min": 4096}}})
    assert abis.uses_fleet and abis.instance_requirements == {
        "VCpuCount": {"Min": 2, "Max": 8}, "MemoryMiB": {"Min": 4096}}
