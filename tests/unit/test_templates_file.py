"""Reading HostFactory templates files: every problem names the template and the field."""

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


def test_the_shipped_example_loads_in_file_order() -> None:
    loaded = load_templates_file(None)
    assert loaded == load_templates_file(EXAMPLE_TEMPLATES)
    assert [t.template_id for t in loaded] == ["x86-small", "x86-large", "arm-medium"]
    assert loaded[0].document["templateId"] == "x86-small"


def test_every_key_of_a_template_is_kept() -> None:
    item = {"templateId": "t", "maxNumber": 3, "attributes": {"ncpus": ["Numeric", "2"]},
            "imageId": "ami-1", "instanceTags": "team=hpc"}
    [template] = parse_templates({"templates": [item]})
    assert (template.max_number, template.attributes) == (3, {"ncpus": ["Numeric", "2"]})
    assert template.document == item


@pytest.mark.parametrize(("document", "problem"), [
    ([], 'expected {"templates": [...]}'),
    ({"templates": {}}, 'expected {"templates": [...]}'),
    ({"templates": ["x"]}, "templates[0] is not an object"),
    ({"templates": [{"maxNumber": 1}]}, "templates[0]: templateId must be a non-empty string"),
    ({"templates": [{"templateId": "a", "maxNumber": 0}]},
     "templates[0]: maxNumber must be an integer >= 1"),
    ({"templates": [{"templateId": "a", "maxNumber": True}]},
     "templates[0]: maxNumber must be an integer >= 1"),
    ({"templates": [{"templateId": "a", "maxNumber": 1, "attributes": []}]},
     "templates[0]: attributes must be an object"),
    ({"templates": [{"templateId": "a", "maxNumber": 1},
                    {"templateId": "a", "maxNumber": 2}]},
     "templates[1]: templateId 'a' appears twice"),
])
def test_a_problem_names_its_template_and_field(document: Any, problem: str) -> None:
    with pytest.raises(TemplatesFileError) as caught:
        parse_templates(document, "t.json")
    assert str(caught.value) == f"t.json: {problem}"


def test_an_unreadable_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TemplatesFileError, match="cannot read"):
        load_templates_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"templates": [')
    with pytest.raises(TemplatesFileError, match="not JSON"):
        load_templates_file(broken)
