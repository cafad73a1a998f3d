"""`sequifier hyperparameter-search` over the keys of masked modelling and fine-tuning: every point
trains with the objective, masking and frozen groups it asks for, starting from its init_from
model; a new init_from model trains the runs again; a bad value is an error naming the key."""

import csv

import pytest
import torch
import yaml
from conftest import Project, run_cli, sequences_table

from sequifier import config as stage_config
from sequifier.model.export import find_export, read_bundle
from sequifier.search.runner import Search

SPACE = {
    "objective": ["causal", "masked"],
    "masking_probability": [0.3],
    "training_spec.freeze": [["blocks"], ["nonsense"]],  # no group of the model: those runs fail
}


def write_search(project: Project, space: dict, name: str = "keys") -> None:
    config = {
        "project_root": str(project.root),
        "search_name": name,
        "train_config_path": "configs/train.yaml",
        "space": space,
    }
    (project.root / "configs" / "hyperparameter-search.yaml").write_text(
        yaml.safe_dump(config, sort_keys=False)
    )


def search(project: Project):
    return run_cli("hyperparameter-search", "--jobs", "2", cwd=project.root)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny project, a model pretrained on it (models/base.pt), and a search of SPACE whose
    runs start from that model (init_from), 2 at a time."""
    project = Project(tmp_path_factory.mktemp("keys") / "p")
    project.write_data(sequences_table(n_sequences=20, max_length=20))
    project.preprocess(seq_length=6, split_ratios=[0.7, 0.3])
    project.train_in_process("pretrained")
    pretrained = find_export(project.root / "models", "pretrained")
    (project.root / "models" / "base.pt").write_bytes(pretrained.read_bytes())
    train = {
        "project_root": str(project.root),
        "metadata_config_path": "configs/metadata_configs/table.json",
        "target_columns": ["item", "price"],
        "init_from": "models/base.pt",
        "export_onnx": False,
        "export_embedding_model": False,
        "wandb": {"mode": "disabled"},
        "model_spec": {"dim_model": 16, "n_head": 2, "dim_feedforward": 16, "num_layers": 1},
        "training_spec": {"epochs": 1, "batch_size": 16, "learning_rate": 0.01},
    }
    (project.root / "configs" / "train.yaml").write_text(yaml.safe_dump(train))
    write_search(project, SPACE)
    result = search(project)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return project, result


def leaderboard(project: Project, name: str = "keys") -> dict:
    with open(project.root / "outputs/hyperparameter-search" / name / "leaderboard.csv") as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def blocks(path) -> dict:
    return {key: value for key, value in read_bundle(path)["state_dict"].items() if key.startswith("blocks.")}


def test_every_point_trains_with_its_objective_and_frozen_groups_from_init_from(searched):
    project, result = searched
    rows = leaderboard(project)
    done = {name: row for name, row in rows.items() if row["status"] == "done"}
    assert sorted(row["objective"] for row in done.values()) == ["causal", "masked"], rows
    base = blocks(project.root / "models" / "base.pt")
    for name, row in done.items():
        assert row["training_spec.freeze"] == '["blocks"]' and row["masking_probability"] == "0.3"
        bundle = find_export(project.root / "models", name)
        assert read_bundle(bundle)["model_args"]["objective"] == row["objective"], name
        trained = blocks(bundle)  # frozen: bit-identical to those of the init_from model
        assert base and all(torch.equal(trained[key], base[key]) for key in base), name
        log = (project.root / "outputs/hyperparameter-search/keys/logs" / f"{name}.log").read_text()
        assert "init_from" in log and "models/base.pt" in log and "weights of the model taken" in log
        assert "frozen: blocks" in log, log
    causal, masked = sorted(done.values(), key=lambda row: row["objective"])
    assert causal["best_validation_loss"] != masked["best_validation_loss"]  # a loss over other items
    failed = [name for name, row in rows.items() if row["status"] == "failed"]
    assert len(failed) == 2 and all("nonsense" in name for name in failed)
    for name in failed:  # each fails alone, saying why
        warning = next(line for line in result.stderr.splitlines() if f"run {name} failed" in line)
        assert "training_spec.freeze: 'nonsense' not a group of this model; its groups: encoders" in warning


def test_a_new_init_from_model_trains_the_runs_again(searched):
    project, _ = searched
    path = project.root / "configs" / "hyperparameter-search.yaml"
    runs = Search(stage_config.load("hyperparameter-search", path), str(path))
    done = [name for name in runs.configs if "blocks" in name]
    assert all(runs.finished(name) for name in done)  # a search now would not train them again
    other = find_export(project.root / "models", done[0])
    (project.root / "models" / "base.pt").write_bytes(other.read_bytes())  # same structure, new weights
    assert not any(runs.finished(name) for name in done)  # the next search trains them again


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"objective": ["causal", "bidirectional"]}, "objective: 'bidirectional' is not valid"),
        ({"masking_probability": [0.2, 1.5]}, "masking_probability: 1.5 is not valid"),
        ({"target_offset": [0]}, "target_offset: 0 is not valid"),
        ({"training_spec.freeze": ["blocks"]}, "training_spec.freeze: 'blocks' is not valid"),
        ({"init_from": [3]}, "init_from: 3 is not valid"),
        (
            {"init_from": ["models/base.pt", "models/gone.pt"]},
            "space.init_from (run init_from-models.gone.pt): init_from: 'models/gone.pt': not a file",
        ),
    ],
)
def test_a_bad_value_in_the_space_stops_the_search_naming_it(searched, space, expected):
    project, _ = searched
    write_search(project, space, name="bad")
    result = search(project)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert (
        "configs/hyperparameter-search.yaml: " in line
        and expected in result.stderr
        and not (project.root / "outputs/hyperparameter-search/bad").exists()
    )
