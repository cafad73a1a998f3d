"""The config reference in README.md, generated from the stage schemas and, in a checkout, the
workflow's config schema.

`python scripts/reference.py README.md` rewrites the block between the markers; a test
checks that the README holds what the schemas say.
"""

import json
import sys
from pathlib import Path

import yaml

from sequifier.config import STAGES, load_schema

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
WORKFLOW_SCHEMA = Path("workflow/schemas/config.schema.yaml")


def _type(field: dict) -> str:
    if "enum" in field:
        return " \\| ".join("null" if v is None else str(v) for v in field["enum"])
    kinds = field.get("type", "")
    return " \\| ".join(kinds) if isinstance(kinds, list) else kinds


def _section(title: str, schema: dict) -> list[str]:
    required = set(schema.get("required", []))
    lines = [
        f"### {title}",
        "",
        " ".join(schema["description"].split()),
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, field in schema["properties"].items():
        default = "required" if key in required else f"`{json.dumps(field.get('default'))}`"
        description = " ".join(field["description"].split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(field)} | {default} | {description} |")
    return [*lines, ""]


def render(root: Path | None = None) -> str:
    """The stages' sections, then the workflow config's when `root` (a checkout) has its schema."""
    lines = []
    for stage in STAGES:
        lines += _section(f"`{stage}`", load_schema(stage))
    if root is not None and (root / WORKFLOW_SCHEMA).is_file():
        schema = yaml.safe_load((root / WORKFLOW_SCHEMA).read_text())
        lines += _section("`config/config.yaml` (the workflow)", schema)
    return "\n".join(lines)


def with_reference(text: str, root: Path | None = None) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render(root)}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(with_reference(path.read_text(), path.resolve().parent))
