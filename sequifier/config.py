"""Stage configs: YAML -> overrides -> schema defaults -> validation.

One jsonschema per stage lives in `sequifier/schemas/{stage}.schema.yaml`; every field there
has a type, a default and a description, and that file is the only place a field is defined.
"""

import copy
import difflib
import re
from functools import lru_cache
from pathlib import Path

import yaml

from sequifier.errors import ConfigError

SCHEMA_DIR = Path(__file__).parent / "schemas"
STAGES = ("preprocess", "train", "infer", "hyperparameter-search")


@lru_cache(maxsize=None)
def load_schema(stage: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{stage}.schema.yaml").read_text())


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3 as a number (as YAML 1.2 does; YAML 1.1 reads it as text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def parse_yaml(text: str, source: str, hint: str = ""):
    """The YAML document `text`; a key given twice in one mapping is a ConfigError naming both lines
    (YAML loaders otherwise keep the last silently), as is text that is not YAML (with `hint`)."""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_repeated_keys(node, source, [], set())
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(error)}{hint}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong, and where."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    context = f" ({error.context})" if getattr(error, "context", None) else ""
    return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}{context}"


def _refuse_repeated_keys(node, source: str, where: list, seen: set) -> None:
    if id(node) in seen:  # an alias of a node already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in lines:
                    first, second = lines[key.value], key.start_mark
                    places = (
                        f"on line {first.line + 1} and on line {second.line + 1}"
                        if first.line != second.line
                        else f"on line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
                    )
                    raise ConfigError(
                        f"{source}: key {_key_path([*where, key.value])!r} is given twice, {places}; keep one"
                    )
                lines[key.value] = key.start_mark
                _refuse_repeated_keys(value, source, [*where, key.value], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(item, source, [*where, index], seen)


def read_yaml(path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a config file (YAML)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (line {line} holds the byte {raw[error.start]:#x}; it was saved in "
            "another encoding, such as latin-1 or cp1252); save the config as UTF-8"
        ) from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return data


def set_dotted(config: dict, key: str, value) -> None:
    """Set `a.b.c` in a nested dict, creating the intermediate mappings."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: '{part}' is not a mapping, cannot set '{leaf}' inside it")
    node[leaf] = value


def with_defaults(schema: dict, data: dict) -> dict:
    """Fill every missing key that has a default in the schema, recursively."""
    result = copy.deepcopy(data)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if isinstance(result.get(key), dict) and "properties" in sub:
            result[key] = with_defaults(sub, result[key])
    return result


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _describe(error, schema: dict) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        lines = []
        for key in unknown:
            full = _key_path([*error.absolute_path, key])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{full}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
        return "\n".join(lines)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{_key_path([*error.absolute_path, missing])}: required key is missing"
    expected = error.schema.get("description", "")
    detail = f" ({expected})" if expected and error.validator in ("enum", "type", "anyOf") else ""
    if error.validator == "type" and isinstance(error.instance, str) and _is_number(error.instance):
        detail += "; it is quoted, so it is text: write the number without quotes"
    return f"{where}: {error.instance!r} is not valid: {error.message}{detail}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate(stage: str, config: dict, source: str) -> None:
    import jsonschema

    schema = load_schema(stage)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  {_describe(e, schema)}" for e in errors)
        raise ConfigError(f"{source}: invalid {stage} config:\n{lines}")


def resolve(stage: str, data: dict, source: str, overrides: dict | None = None) -> dict:
    """Apply overrides (dotted keys allowed) and defaults to `data`, then validate."""
    config = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    config = with_defaults(load_schema(stage), config)
    validate(stage, config, source)
    return config


def load(stage: str, path, overrides: dict | None = None) -> dict:
    """Read a stage config file and resolve it; errors name `path`."""
    return resolve(stage, read_yaml(path), str(path), overrides)


def load_linked(stage: str, root: Path, config: dict, key: str, source: str, instead: str) -> dict:
    """The `stage` config that `key` of a config names (relative to root), resolved; used when the
    config leaves `instead` to it."""
    path = root / config[key]
    if not path.is_file():
        raise ConfigError(
            f"{source}: {instead} is null and the {stage} config {path} ({key}) does not exist; set {instead}"
        )
    return load(stage, path)
