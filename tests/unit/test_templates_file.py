"""Reading HostFactory templates files: the format administrators already write (pairs or
flat attributes, maxNumber -1 to 10000, every key kept), and every problem named with its
template and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from commands_worker.adapters.templates_file import (
    EXAMPLE_TEMPLATES,
    TemplatesFileError,
    load_templates_file,
    parse_templates,
)

ATTRS = {"type": ["String", "X86_64"], "ncpus": ["Numeric", "2"], "nram": ["Numeric", "4096"]}


def one(**fields: Any) -> dict[str, Any]:
    return {"templates": [{"templateId": "t", "maxNumber": 3, "attributes": ATTRS, **fields}]}


def problems_of(document: Any) -> list[str]:
    with pytest.raises(TemplatesFileError) as caught:
        parse_templates(document, "t.json")
    return caught.value.problems


def test_the_shipped_example_loads() -> None:
    loaded = load_templates_file(None)
    assert loaded == load_templates_file(EXAMPLE_TEMPLATES) and not loaded.refused
    assert [t.template_id for t in loaded.templates] == ["x86-small", "x86-large", "arm-medium"]


def test_every_key_of_a_template_is_kept_in_file_order() -> None:
    document = one(imageId="ami-1", instanceTags="team=hpc", vmTypes={"m5.large": 1})
    [template] = parse_templates(document).templates
    assert list(template.document) == ["templateId", "maxNumber", "attributes", "imageId",
                                       "instanceTags", "vmTypes"]
    assert template.document["vmTypes"] == {"m5.large": 1}


def test_flat_attributes_become_pairs_with_string_values() -> None:
    [template] = parse_templates(one(attributes={
        "type": "X86_64", "ncpus": 2, "nram": 4096.0, "rank": ["Numeric", 1.5],
        "spot": True, "mem": ["Numeric", " 512 "], "gpu": ["Boolean", "false"]})).templates
    assert template.attributes == {
        "type": ["String", "X86_64"], "ncpus": ["Numeric", "2"], "nram": ["Numeric", "4096"],
        "rank": ["Numeric", "1.5"], "spot": ["Boolean", "true"], "mem": ["Numeric", "512"],
        "gpu": ["Boolean", "false"]}
    assert template.document["attributes"] == template.attributes


@pytest.mark.parametrize("max_number", [-1, 0, 10_000])
def test_max_number_from_unlimited_to_ten_thousand(max_number: int) -> None:
    [template] = parse_templates(one(maxNumber=max_number)).templates
    assert template.max_number == max_number
    assert template.exceeded_by(10_000) is (max_number == 0)


def test_every_problem_is_named_and_costs_only_its_template() -> None:
    loaded = parse_templates({"templates": [
        {"templateId": "ok", "maxNumber": 1, "attributes": ATTRS},
        {"templateId": "bad one", "maxNumber": 1, "attributes": ATTRS},
        {"templateId": "big", "maxNumber": 20_000, "attributes": {"type": "X"}},
        {"templateId": "t2", "maxNumber": True, "attributes": {**ATTRS, "ncpus": ["Numeric", "two"],
                                                                "x": ["Float", "1"]}},
        "x",
        {"templateId": "ok", "maxNumber": 2, "attributes": ATTRS},
        {"templateId": "fine", "maxNumber": 2, "attributes": ATTRS},
    ]}, "t.json")
    assert [t.template_id for t in loaded.templates] == ["ok", "fine"]
    assert loaded.templates[0].max_number == 1  # the first of two with one id is served
    assert [r.template_id for r in loaded.refused] == ["bad one", "big", "t2", None, "ok"]
    assert loaded.problems() == [
        "t.json: templates[1] (bad one): templateId 'bad one' must be 1-200 letters, digits "
        "and ._:@+=- (it is sent as template_id)",
        "t.json: templates[2] (big): maxNumber must be an integer from -1 (unlimited) to 10000",
        "t.json: templates[2] (big): attributes.ncpus is required",
        "t.json: templates[2] (big): attributes.nram is required",
        "t.json: templates[3] (t2): maxNumber must be an integer from -1 (unlimited) to 10000",
        "t.json: templates[3] (t2): attributes.ncpus is Numeric but its value is not a number",
        "t.json: templates[3] (t2): attributes.x must be [TypeTag, value] with TypeTag one of "
        "String, Numeric, Boolean, or a plain value",
        "t.json: templates[4]: not an object",
        "t.json: templates[5] (ok): templateId 'ok' appears earlier in the file; this one is "
        "left out",
    ]


def test_null_means_absent_and_is_served_back_as_given() -> None:
    [template] = parse_templates(one(
        description=None, priority=None, pgrpName=None, onDemandCapacity=0,
        attributes={**ATTRS, "rank": None})).templates
    assert template.document["pgrpName"] is None and template.document["onDemandCapacity"] == 0
    assert "rank" not in template.attributes
    refused = parse_templates({"templates": [
        {"templateId": "n", "maxNumber": None, "attributes": ATTRS},
        {"templateId": "fine", "maxNumber": 1, "attributes": ATTRS}]}).refused
    assert refused[0].problems == (
        "maxNumber must be an integer from -1 (unlimited) to 10000",)


@pytest.mark.parametrize(("document", "problem"), [
    ([], 't.json: expected {"templates": [...]}'),
    ({"templates": []}, "t.json: no templates (HostFactory drops a provider that offers none)"),
    (one(attributes=[]), "t.json: no usable template"),
])
def test_a_file_that_offers_nothing_usable_is_refused(document: Any, problem: str) -> None:
    assert problems_of(document)[0] == problem


def test_an_unreadable_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TemplatesFileError, match="cannot read"):
        load_templates_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"templates": [')
    with pytest.raises(TemplatesFileError, match="not JSON"):
        load_templates_file(broken)
