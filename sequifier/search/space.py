"""A search space made into runs: points, their ids, and the train config of each.

`expand` turns a space of dotted train-config keys into points: every combination of the listed
values (grid), or n_samples points drawn with a seed (sample). `run_id` names a point by its
values, readable and stable: the same space and seed give the same ids, and adding a value to a
grid leaves the ids of the other points as they were. `run_configs` checks every point against
the train schema (the one definition of the keys) and returns the resolved train config of each.
"""

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np

from sequifier import config as stage_config
from sequifier.errors import ConfigError

ID_LENGTH = 80


def _is_range(values) -> bool:
    return isinstance(values, dict)


def expand(space: dict, strategy: str, n_samples: int | None, seed: int, source: str) -> list[dict]:
    """The points of the space, in a stable order; each a {dotted key: value}."""
    keys = list(space)
    if strategy == "grid":
        ranges = [key for key in keys if _is_range(space[key])]
        if ranges:
            raise ConfigError(
                f"{source}: space.{ranges[0]}: a range {space[ranges[0]]} needs strategy: sample; "
                "a grid takes lists of values"
            )
        points = [dict(zip(keys, values)) for values in itertools.product(*(space[key] for key in keys))]
    else:
        if n_samples is None:
            raise ConfigError(f"{source}: n_samples: null, but strategy sample needs a number of points")
        generator = np.random.default_rng(seed)
        points = [{key: _draw(space[key], generator) for key in keys} for _ in range(n_samples)]
    unique = {json.dumps(point, sort_keys=True): point for point in points}
    return list(unique.values())


def _draw(values, generator: np.random.Generator):
    if not _is_range(values):
        return values[int(generator.integers(len(values)))]
    low, high = values["low"], values["high"]
    integer = isinstance(low, int) and isinstance(high, int)
    if values.get("log"):
        drawn = float(np.exp(generator.uniform(np.log(low), np.log(high))))
    else:
        drawn = float(generator.uniform(low, high))
    return int(round(drawn)) if integer else float(f"{drawn:.4g}")


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def run_id(point: dict) -> str:
    """A point as a name: `dim_model-64_learning_rate-0.001` (the last part of each key, its value).

    Characters a file name or a Snakemake wildcard cannot take become '.', and a long name keeps
    its start and gets a hash of the whole point."""
    parts = [f"{key.split('.')[-1]}-{_text(value)}" for key, value in point.items()]
    name = re.sub(r"[^A-Za-z0-9_.-]+", ".", "_".join(parts))
    if len(name) > ID_LENGTH:
        digest = hashlib.blake2b(json.dumps(point, sort_keys=True).encode(), digest_size=4).hexdigest()
        name = f"{name[: ID_LENGTH - 9]}-{digest}"
    return name


def run_ids(points: list[dict]) -> dict:
    """{run id: point}; two points with one name (values that differ only in characters a name
    cannot hold) are an error."""
    ids = {}
    for point in points:
        name = run_id(point)
        if name in ids:
            raise ConfigError(f"space: the points {ids[name]} and {point} get the same run id '{name}'")
        ids[name] = point
    return ids


def run_configs(ids: dict, base: dict, source: str, overrides) -> dict:
    """{run id: resolved train config}: the base with the point and `overrides(run_id, point)`."""
    configs = {}
    for name, point in ids.items():
        try:
            configs[name] = stage_config.resolve(
                "train", base, f"run {name}", {**point, **overrides(name, point)}
            )
        except ConfigError as error:
            if not point:  # no search: the base config itself
                raise ConfigError(f"{source}: {error}") from None
            keys = ", ".join(f"space.{key}" for key in point)
            raise ConfigError(
                f"{source}: a point of the space ({keys}) is not a valid train config:\n{error}"
            ) from None
    return configs


def init_from_file(resolved: dict) -> Path | None:
    """The model a run starts from (init_from of its resolved train config, under its project
    root), or None: an input of the run, so that a new one trains it again. (As
    `sequifier.train.transfer.source_path`, which the workflow's parsing does not import: torch.)"""
    if not resolved["init_from"]:
        return None
    return Path(resolved["project_root"]) / resolved["init_from"]


def check_init_from(ids: dict, configs: dict, source: str, train_source: str, outputs=None) -> None:
    """Every run's init_from model is a file, and not in `outputs` (the workflow's folder of the
    runs, which Snakemake empties before it trains a run again): an error before any run starts,
    naming the point's key in the space (`source`) or init_from of the train config."""
    for name, resolved in configs.items():
        path = init_from_file(resolved)
        if path is None:
            continue
        where = f"{source}: space.init_from (run {name})" if "init_from" in ids[name] else train_source
        where = f"{where}: init_from: '{resolved['init_from']}'"
        if outputs is not None and path.resolve().is_relative_to(Path(outputs).resolve()):
            raise ConfigError(
                f"{where} is in {outputs}, the runs' outputs, which a run trained again replaces: "
                "copy the model out of it (e.g. to pretrained/) and name the copy"
            )
        if not path.is_file():
            full = f" ({path})" if str(path) != resolved["init_from"] else ""
            raise ConfigError(
                f"{where}: not a file{full}; expected a pt model bundle or a training checkpoint"
            )


def tags(point: dict) -> list[str]:
    """W&B tags of a run: key=value, at most 64 characters each."""
    return [f"{key.split('.')[-1]}={_text(value)}"[:64] for key, value in point.items()]


def points_table(ids: dict) -> list[dict]:
    """runs.csv: the run id, then one column per key of the space."""
    return [
        {"run": name, **{key: _text(value) for key, value in point.items()}} for name, point in ids.items()
    ]
