"""Read templates files in HostFactory's own format, as administrators already write them
(the ``awsprov_templates.json`` shape):

    {"templates": [{"templateId": "linux-small", "maxNumber": 20,
                    "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", "2"],
                                   "nram": ["Numeric", "4096"]},
                    "imageId": "ami-…", "vmType": "m5.large", "instanceTags": "team=hpc", …}]}

Attributes come as ``[TypeTag, value]`` pairs or as flat values (``"ncpus": 2``) and leave
here as pairs with string values, the way HostFactory reads them; every other key of a
template is kept, in file order. A template with ``imageId`` is an AWS template: its fields
must be ones the AWS provider knows (``shared.awsprov``); its ``userDataScript`` is read
here. ``maxNumber`` is -1 (unlimited) to 10000; 0 means none may be requested. ``null``
means absent for every optional field (and is served back as given).

One template with a problem costs only itself: it is left out, named with its field and
reason (``Loaded.refused``), and every other template is served. The file as a whole is
refused only when it is not JSON, not the ``{"templates": [...]}`` shape, or holds no usable
template.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
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
MAX_USER_DATA_BYTES: Final = 16 * 1024


class TemplatesFileError(ValueError):
    """The templates file as a whole cannot be used (not readable, not JSON, not the
    ``{"templates": [...]}`` shape, or no usable template in it); the message lists every
    problem, one a line. The templates loaded before stay."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Refused:
    """One template left out, and every problem with it."""

    where: str  # "FILE: templates[3] (linux-spot)"
    template_id: str | None
    problems: tuple[str, ...]

    def lines(self) -> list[str]:
        return [f"{self.where}: {problem}" for problem in self.problems]


@dataclass(frozen=True)
class Loaded:
    """What a templates file gives: the usable templates, and each one left out."""

    templates: list[Template]
    refused: list[Refused] = field(default_factory=list)

    def problems(self) -> list[str]:
        return [line for refused in self.refused for line in refused.lines()]


def parse_templates(document: Any, source: str = "templates",
                    base_dir: Path | None = None) -> Loaded:
    """Every usable template of ``document``; one with a problem is left out alone (in
    ``refused``). Raises ``TemplatesFileError`` only when none is usable."""
    if not isinstance(document, dict) or not isinstance(document.get("templates"), list):
        raise TemplatesFileError([f'{source}: expected {{"templates": [...]}}'])
    if not document["templates"]:
        raise TemplatesFileError([f"{source}: no templates (HostFactory drops a provider "
                                  "that offers none)"])
    parsed: dict[str, Template] = {}
    refused: list[Refused] = []
    for index, item in enumerate(document["templates"]):
        where = f"{source}: templates[{index}]"
        problems: list[str] = []
        found = _template(item, problems, base_dir or Path.cwd())
        if isinstance(item, dict) and isinstance(item.get("templateId"), str):
            where += f" ({item['templateId'][:64]})"
        if found is not None and found.template_id in parsed:
            problems.append(f"templateId {found.template_id!r} appears earlier in the file; "
                            "this one is left out")
        if problems:
            template_id = item.get("templateId") if isinstance(item, dict) else None
            refused.append(Refused(where, template_id if isinstance(template_id, str) else None,
                                   tuple(problems)))
        elif found is not None:
            parsed[found.template_id] = found
    if not parsed:
        raise TemplatesFileError([f"{source}: no usable template"] +
                                 [line for r in refused for line in r.lines()])
    return Loaded(list(parsed.values()), refused)


def _template(item: Any, problems: list[str], base_dir: Path) -> Template | None:
    if not isinstance(item, dict):
        problems.append("not an object")
        return None
    given = awsprov.present(item)  # null means absent
    template_id, max_number = given.get("templateId"), given.get("maxNumber")
    if not isinstance(template_id, str) or not template_id:
        problems.append("templateId must be a non-empty string")
    elif not is_valid_id(template_id):
        problems.append(f"templateId {template_id[:40]!r} must be 1-200 letters, digits and "
                        "._:@+=- (it is sent as template_id)")
    low, high = MAX_NUMBER_RANGE
    if isinstance(max_number, bool) or not isinstance(max_number, int) or not (
            low <= max_number <= high):
        problems.append(f"maxNumber must be an integer from {low} (unlimited) to {high}")
    problems += [f"{key}: keys starting hf: are reserved" for key in given
                 if key.startswith("hf:")]
    attributes = _attributes(given.get("attributes"), problems)
    user_data = None
    if awsprov.is_aws_template(item):
        problems += awsprov.problems(item)
        user_data = _user_data(given.get("userDataScript"), base_dir, problems)
    if problems:
        return None
    assert isinstance(template_id, str) and isinstance(max_number, int)
    document = {k: (attributes if k == "attributes" else v) for k, v in item.items()}
    return Template(template_id, max_number, attributes, document, user_data)


def _user_data(path_text: Any, base_dir: Path, problems: list[str]) -> str | None:
    """The script ``userDataScript`` names, read here (a path relative to the templates
    file's folder), bounded to what EC2 takes: the feed event carries its bytes."""
    if not isinstance(path_text, str) or not path_text.strip():
        return None
    path = base_dir / path_text.strip()
    try:
        with path.open("rb") as script:
            data = script.read(MAX_USER_DATA_BYTES + 1)
    except OSError as exc:
        problems.append(f"userDataScript: cannot read {path} ({exc.strerror or exc})")
        return None
    if len(data) > MAX_USER_DATA_BYTES:
        problems.append(f"userDataScript: {path} is over {MAX_USER_DATA_BYTES} bytes, "
                        "what EC2 takes")
        return None
    return base64.b64encode(data).decode()


def _attributes(raw: Any, problems: list[str]) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        problems.append("attributes must be an object")
        return {}
    pairs = {}
    for name, value in raw.items():
        if value is None:  # null means absent
            continue
        pair = _pair(value)
        if isinstance(pair, str):
            problems.append(f"attributes.{name} {pair}")
        else:
            pairs[name] = pair
    for name in REQUIRED_ATTRIBUTES:
        if raw.get(name) is None:
            problems.append(f"attributes.{name} is required")
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


def load_templates_file(path: Path | None) -> Loaded:
    path = path or EXAMPLE_TEMPLATES
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise TemplatesFileError([f"{path}: cannot read ({exc.strerror})"]) from exc
    except orjson.JSONDecodeError as exc:
        raise TemplatesFileError([f"{path}: not JSON ({exc})"]) from exc
    return parse_templates(document, str(path), path.parent)
