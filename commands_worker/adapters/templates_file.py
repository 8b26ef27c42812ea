"""Read templates files in HostFactory's own format, as administrators already write them
(the ``awsprov_templates.json`` shape):

    {"templates": [{"templateId": "linux-small", "maxNumber": 20,
                    "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", "2"],
                                   "nram": ["Numeric", "4096"]},
                    "imageId": "ami-…", "vmType": "m5.large", "instanceTags": "team=hpc", …}]}

Attributes come as ``[TypeTag, value]`` pairs or as flat values (``"ncpus": 2``) and leave
here as pairs with string values, the way HostFactory reads them; every other key of a
template is kept, in file order. A template with ``imageId`` is an AWS template: its fields
must be ones the AWS provider honours (``shared.awsprov``). ``maxNumber`` is -1 (unlimited)
to 10000; 0 means none may be requested. Every problem is reported, each with its template
and field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import orjson

from commands_worker.domain.model import Template
from shared import awsprov
from shared.ids import is_valid_id

EXAMPLE_TEMPLATES = Path(__file__).parent.parent / "example_templates.json"
TYPE_TAGS: Final = ("String", "Numeric", "Boolean")
REQUIRED_ATTRIBUTES: Final = ("type", "ncpus", "nram")
MAX_NUMBER_RANGE: Final = (-1, 10_000)


class TemplatesFileError(ValueError):
    """The templates file cannot be used; the message lists every problem, one a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_templates(document: Any, source: str = "templates") -> list[Template]:
    if not isinstance(document, dict) or not isinstance(document.get("templates"), list):
        raise TemplatesFileError([f'{source}: expected {{"templates": [...]}}'])
    if not document["templates"]:
        raise TemplatesFileError([f"{source}: no templates (HostFactory drops a provider "
                                  "that offers none)"])
    parsed: dict[str, Template] = {}
    problems: list[str] = []
    for index, item in enumerate(document["templates"]):
        where = f"{source}: templates[{index}]"
        found = _template(item, where, problems)
        if found is None:
            continue
        if found.template_id in parsed:
            problems.append(f"{where}: templateId {found.template_id!r} appears twice")
        parsed[found.template_id] = found
    if problems:
        raise TemplatesFileError(problems)
    return list(parsed.values())


def _template(item: Any, where: str, problems: list[str]) -> Template | None:
    if not isinstance(item, dict):
        problems.append(f"{where} is not an object")
        return None
    before = len(problems)
    template_id, max_number = item.get("templateId"), item.get("maxNumber")
    if not isinstance(template_id, str) or not template_id:
        problems.append(f"{where}: templateId must be a non-empty string")
    elif not is_valid_id(template_id):
        problems.append(f"{where}: templateId {template_id[:40]!r} must be 1-200 letters, "
                        "digits and ._:@+=- (it is sent as template_id)")
        where = f"{where} ({template_id[:40]})"
    else:
        where = f"{where} ({template_id})"
    low, high = MAX_NUMBER_RANGE
    if isinstance(max_number, bool) or not isinstance(max_number, int) or not (
            low <= max_number <= high):
        problems.append(f"{where}: maxNumber must be an integer from {low} (unlimited) "
                        f"to {high}")
    attributes = _attributes(item.get("attributes"), where, problems)
    if awsprov.is_aws_template(item):
        problems.extend(f"{where}: {problem}" for problem in awsprov.problems(item))
    if len(problems) > before:
        return None
    assert isinstance(template_id, str) and isinstance(max_number, int)
    document = {k: (attributes if k == "attributes" else v) for k, v in item.items()}
    return Template(template_id, max_number, attributes, document)


def _attributes(raw: Any, where: str, problems: list[str]) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        problems.append(f"{where}: attributes must be an object")
        return {}
    pairs = {}
    for name, value in raw.items():
        pair = _pair(value)
        if isinstance(pair, str):
            problems.append(f"{where}: attributes.{name} {pair}")
        else:
            pairs[name] = pair
    for name in REQUIRED_ATTRIBUTES:
        if name not in raw:
            problems.append(f"{where}: attributes.{name} is required")
    return pairs


def _pair(value: Any) -> list[str] | str:
    """``[TypeTag, string]``, or what is wrong with ``value``."""
    if isinstance(value, bool):
        return ["Boolean", "true" if value else "false"]
    if isinstance(value, int | float):
        return ["Numeric", _number_text(value)]
    if isinstance(value, str):
        return ["String", value]
    if not (isinstance(value, list) and len(value) == 2 and value[0] in TYPE_TAGS):
        return (f"must be [TypeTag, value] with TypeTag one of {', '.join(TYPE_TAGS)}, "
                "or a plain value")
    tag, inner = value
    if tag == "Numeric":
        if isinstance(inner, bool) or not _is_number(inner):
            return "is Numeric but its value is not a number"
        return ["Numeric", inner.strip() if isinstance(inner, str) else _number_text(inner)]
    if tag == "Boolean" and str(inner).lower() not in ("true", "false"):
        return "is Boolean but its value is neither true nor false"
    if isinstance(inner, bool):
        return [tag, "true" if inner else "false"]
    return [tag, str(inner)] if isinstance(inner, str | int | float) else (
        f"is {tag} but its value is not text")


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number_text(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def load_templates_file(path: Path | None) -> list[Template]:
    path = path or EXAMPLE_TEMPLATES
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise TemplatesFileError([f"{path}: cannot read ({exc.strerror})"]) from exc
    except orjson.JSONDecodeError as exc:
        raise TemplatesFileError([f"{path}: not JSON ({exc})"]) from exc
    return parse_templates(document, str(path))
