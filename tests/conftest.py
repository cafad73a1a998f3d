import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """The files with slow tests first (those on the SLURM cluster mostly wait for it): with
    `-n 2` (pytest-xdist, a file per worker at a time) the other worker runs the rest meanwhile."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the order within a file is kept


def pytest_runtest_setup(item):
    """Tests marked `slurm` run on the local cluster of scripts/slurm-cluster, or skip saying why."""
    if item.get_closest_marker("slurm"):
        from slurm_cluster import down_reason

        reason = down_reason()
        if reason:
            pytest.skip(reason)


def sequences_table(n_sequences=30, min_length=3, max_length=40, seed=0, n_categories=6):
    """A long table with one string, one integer categorical and one real column."""
    rng = np.random.default_rng(seed)
    frames = []
    for sequence in range(n_sequences):
        length = int(rng.integers(min_length, max_length + 1))
        frames.append(
            pd.DataFrame(
                {
                    "sequenceId": sequence,
                    "itemPosition": np.arange(length) + 5,
                    "item": rng.choice([f"v{i}" for i in range(n_categories)], size=length),
                    "code": rng.integers(100, 100 + n_categories, size=length),
                    "price": np.round(rng.normal(10.0, 3.0, size=length), 3),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def items_of_splits(table, ratios) -> list:
    """Per split (within_sequence), the set of its (sequenceId, itemPosition): each sequence cut in
    time order by the ratios, rounding to the nearest item."""
    splits = [set() for _ in ratios]
    for sequence, group in table.groupby("sequenceId"):
        positions = sorted(group.itemPosition)
        cumulative = np.concatenate([[0], np.cumsum(ratios)])
        bounds = np.floor(cumulative * len(positions) + 0.5).astype(int)
        for k in range(len(ratios)):
            splits[k].update((sequence, p) for p in positions[bounds[k] : bounds[k + 1]])
    return splits


class Project:
    """A sequifier project folder in a tmp dir: data, configs, and the outputs of a run."""

    def __init__(self, root: Path):
        self.root = root
        (root / "configs").mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)

    def write_data(self, table: pd.DataFrame, name="table.csv") -> str:
        path = self.root / "data" / name
        table.to_parquet(path, index=False) if name.endswith(".parquet") else table.to_csv(path, index=False)
        return f"data/{name}"

    def config(self, **values) -> dict:
        config = {
            "project_root": str(self.root),
            "data_path": "data/table.csv",
            "seq_length": 4,
            "n_cores": 1,
            **values,
        }
        return config

    def preprocess(self, **values) -> dict:
        from sequifier import config as stage_config
        from sequifier.preprocess import run

        return run(stage_config.resolve("preprocess", self.config(**values), "test config"))

    def write_config(self, name="preprocess.yaml", **values) -> Path:
        path = self.root / "configs" / name
        path.write_text(yaml.safe_dump(self.config(**values)))
        return path

    def write_train_config(self, **training) -> Path:
        """configs/train.yaml: a small model on the preprocessed table, `training` in training_spec."""
        path = self.root / "configs" / "train.yaml"
        config = {
            "project_root": str(self.root),
            "metadata_config_path": "configs/metadata_configs/table.json",
            "export_onnx": False,
            "wandb": {"mode": "disabled"},
            "model_spec": {"dim_model": 8, "n_head": 2, "dim_feedforward": 8},
            "training_spec": training,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def train_in_process(self, name: str, training: dict | None = None, **overrides) -> dict:
        """A small model (targets item and price) trained in this process for 1 epoch; `training`
        added to its training_spec, `overrides` as --set would give them."""
        from sequifier import config as stage_config
        from sequifier.train import run

        values = {
            "project_root": str(self.root),
            "model_name": name,
            "metadata_config_path": "configs/metadata_configs/table.json",
            "target_columns": ["item", "price"],
            "export_onnx": False,
            "wandb": {"mode": "disabled"},
            "model_spec": {"dim_model": 16, "n_head": 2, "dim_feedforward": 16, "num_layers": 1},
            "training_spec": {"epochs": 1, "batch_size": 16, "learning_rate": 0.01, **(training or {})},
        }
        return run(stage_config.resolve("train", values, "test config", overrides))

    def metadata(self, name="table") -> dict:
        return json.loads((self.root / "configs" / "metadata_configs" / f"{name}.json").read_text())

    def split(self, k: int, name="table", fmt="parquet") -> pd.DataFrame:
        path = self.root / "data" / f"{name}-split{k}.{fmt}"
        return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "project")


def run_cli(*args, cwd, check=False, env=None):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "sequifier", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"sequifier {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def made_project(root: Path) -> Path:
    """`sequifier make demo` in root, preprocessed with its own config: the walkthrough's project."""
    run_cli("make", "demo", cwd=root, check=True)
    run_cli("preprocess", cwd=root / "demo", check=True)
    return root / "demo"


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """The walkthrough's project: make, preprocess and train (3 epochs) by the CLI; shared by the
    infer tests, which each write to their own output folder."""
    project = made_project(tmp_path_factory.mktemp("trained"))
    run_cli(
        "train", "--set", "training_spec.epochs=3", "--set", "wandb.mode=disabled", cwd=project, check=True
    )
    return project
