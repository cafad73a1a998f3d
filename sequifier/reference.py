"""The config reference in README.md, generated from the stage schemas.

`python -m sequifier.reference README.md` rewrites the block between the markers; a test
checks that the README holds what the schemas say.
"""

import json
import sys
from pathlib import Path

from sequifier.config import STAGES, load_schema

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def _type(field: dict) -> str:
    if "enum" in field:
        return " \\| ".join("null" if v is None else str(v) for v in field["enum"])
    kinds = field.get("type", "")
    return " \\| ".join(kinds) if isinstance(kinds, list) else kinds


def render() -> str:
    lines = []
    for stage in STAGES:
        schema = load_schema(stage)
        required = set(schema.get("required", []))
        lines += [
            f"### `{stage}`",
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
        lines.append("")
    return "\n".join(lines)


def with_reference(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(with_reference(path.read_text()))
