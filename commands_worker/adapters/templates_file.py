"""Read templates in HostFactory's format (``{"templates": [{"templateId", "maxNumber",
"attributes": {"ncpus": ["Numeric", "1"], ...}, ...}]}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from commands_worker.domain.model import Template

EXAMPLE_TEMPLATES = Path(__file__).parent.parent / "example_templates.json"


class TemplatesFileError(ValueError):
    """The templates file cannot be used; the message says where and why."""


def parse_templates(document: Any, source: str = "templates") -> list[Template]:
    if not isinstance(document, dict) or not isinstance(document.get("templates"), list):
        raise TemplatesFileError(f'{source}: expected {{"templates": [...]}}')
    parsed: dict[str, Template] = {}
    for index, item in enumerate(document["templates"]):
        where = f"{source}: templates[{index}]"
        if not isinstance(item, dict):
            raise TemplatesFileError(f"{where} is not an object")
        template_id, max_number = item.get("templateId"), item.get("maxNumber")
        attributes = item.get("attributes", {})
        if not isinstance(template_id, str) or not template_id:
            raise TemplatesFileError(f"{where}: templateId must be a non-empty string")
        if isinstance(max_number, bool) or not isinstance(max_number, int) or max_number < 1:
            raise TemplatesFileError(f"{where}: maxNumber must be an integer >= 1")
        if not isinstance(attributes, dict):
            raise TemplatesFileError(f"{where}: attributes must be an object")
        if template_id in parsed:
            raise TemplatesFileError(f"{where}: templateId {template_id!r} appears twice")
        parsed[template_id] = Template(template_id, max_number, attributes, dict(item))
    return list(parsed.values())


def load_templates_file(path: Path | None) -> list[Template]:
    path = path or EXAMPLE_TEMPLATES
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise TemplatesFileError(f"{path}: cannot read ({exc.strerror})") from exc
    except orjson.JSONDecodeError as exc:
        raise TemplatesFileError(f"{path}: not JSON ({exc})") from exc
    return parse_templates(document, str(path))
