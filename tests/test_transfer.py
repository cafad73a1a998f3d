"""Fine-tuning: `init_from` a pretrained model, `training_spec.freeze` of groups of the network."""

import csv

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import Project, run_cli

from sequifier.errors import ConfigError
from sequifier.model.export import load_bundle
from sequifier.search import space as search

N_VALUES = 8


def chain(n_sequences: int, length: int, seed: int, extra: str | None = None) -> pd.DataFrame:
    """Items v0..v7 that mostly step by one (v3 -> v4), now and then jump anywhere; `extra`, a
    value the other data set does not hold, now and then, and a column of its own (shop)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sequence in range(n_sequences):
        item = int(rng.integers(N_VALUES))
        for position in range(length):
            value = f"v{item}" if extra is None or rng.random() > 0.05 else extra
            row = {"sequenceId": sequence, "itemPosition": position, "item": value}
            rows.append(row | ({"shop": f"s{sequence % 2}"} if extra else {}))
            item = (item + 1) % N_VALUES if rng.random() < 0.9 else int(rng.integers(N_VALUES))
    return pd.DataFrame(rows)


def prepared(root, table: pd.DataFrame, **training) -> Project:
    project = Project(root)
    project.write_data(table)
    project.preprocess(seq_length=8, split_ratios=[0.7, 0.3])
    config = project.write_train_config(**{"epochs": 2, "batch_size": 16, "learning_rate": 0.01, **training})
    values = yaml.safe_load(config.read_text())
    values["input_columns"] = values["target_columns"] = ["item"]
    values["model_spec"] = {"dim_model": 16, "n_head": 2, "dim_feedforward": 32, "num_layers": 2}
    config.write_text(yaml.safe_dump(values))
    return project


def train(project: Project, name: str, *settings) -> tuple:
    """`sequifier train` by the CLI; (its result, its metrics rows without the baselines)."""
    args = ["train", "--config-path", "configs/train.yaml", "--model-name", name]
    result = run_cli(*args, *[item for s in settings for item in ("--set", s)], cwd=project.root)
    metrics = project.root / "logs" / f"sequifier-{name}-metrics.csv"
    rows = []
    if metrics.is_file():
        with open(metrics) as handle:
            rows = [row for row in csv.DictReader(handle) if not row["kind"].startswith("baseline")]
    return result, rows


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A model trained on a large data set of the chain (the bundle of its last epoch)."""
    project = prepared(tmp_path_factory.mktemp("pretrain") / "p", chain(120, 30, seed=1), epochs=3)
    result, _ = train(project, "base")
    assert result.returncode == 0, result.stderr[-2000:]
    return next((project.root / "models").glob("sequifier-base-last-*.pt"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Project:
    """A small data set of the same chain, with a value the large one never saw (a8: it sorts
    first, so the id of every other value moves)."""
    return prepared(tmp_path_factory.mktemp("small") / "p", chain(6, 30, seed=2, extra="a8"))


def test_fine_tuned_with_frozen_blocks_beats_scratch_and_keeps_the_blocks(pretrained, small):
    result, tuned = train(small, "tuned", f"init_from={pretrained}", "training_spec.freeze=[blocks]")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    log = (small.root / "logs" / "sequifier-tuned.log").read_text()
    assert f"init_from {pretrained}" in log
    assert "head of target 'item': the rows of 8 values matched by value, 1 new value(s) fresh" in log
    assert "encoder of input column 'item': the rows of 8 values matched by value" in log

    source, _ = load_bundle(pretrained)
    model, bundle = load_bundle(next((small.root / "models").glob("sequifier-tuned-last-*.pt")))
    before, after = source.state_dict(), model.state_dict()
    blocks = [key for key in after if key.startswith("blocks.")]
    assert blocks and all(torch.equal(before[key], after[key]) for key in blocks)  # bit-identical
    assert not torch.equal(before["final_norm.weight"], after["final_norm.weight"])  # it trained
    assert set(bundle["metadata"]["id_maps"]["item"]) == {"a8", *(f"v{i}" for i in range(8))}

    _, scratch = train(small, "scratch")
    assert [row["epoch"] for row in tuned] == [row["epoch"] for row in scratch] == ["0", "1", "2"]
    assert float(tuned[-1]["validation_loss"]) < 0.8 * float(scratch[-1]["validation_loss"])


def test_resuming_a_fine_tuning_does_not_read_init_from_again(pretrained, small, tmp_path):
    copy = tmp_path / "source.pt"
    copy.write_bytes(pretrained.read_bytes())
    settings = [f"init_from={copy}", "training_spec.freeze=[encoders,blocks.0]", "training_spec.epochs=1"]
    result, _ = train(small, "resumed", *settings)
    assert result.returncode == 0, result.stderr[-2000:]
    copy.unlink()  # a resumed run has its checkpoint: the source is not needed any more
    more = [*settings[:-1], "training_spec.epochs=2", "training_spec.continue_training=true"]
    result, rows = train(small, "resumed", *more)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert "resuming from" in result.stderr and "init_from" not in result.stderr

    # the frozen encoder holds the pretrained rows, matched by value through the two id maps
    source, before = load_bundle(pretrained)
    model, after = load_bundle(next((small.root / "models").glob("sequifier-resumed-last-*.pt")))
    old_ids, new_ids = before["metadata"]["id_maps"]["item"], after["metadata"]["id_maps"]["item"]
    old_rows, new_rows = source.encoders.encoders[0].weight, model.encoders.encoders[0].weight
    for value, new_id in new_ids.items():
        if value in old_ids:
            assert new_id != old_ids[value] and torch.equal(new_rows[new_id], old_rows[old_ids[value]])
    # the optimizer holds only what trains: not the encoder, not the first block
    state = torch.load(next((small.root / "checkpoints").glob("sequifier-resumed-*.pt")), weights_only=True)
    trainable = [key for key in model.state_dict() if not key.startswith(("encoders.", "blocks.0."))]
    assert len(state["optimizer"]["state"]) == len(trainable)


def test_a_model_of_another_structure_is_refused_naming_every_mismatch(pretrained, small):
    settings = [
        f"init_from={pretrained}",
        "model_spec.dim_model=32",
        "model_spec.num_layers=3",
        "input_columns=[shop]",
    ]
    result, _ = train(small, "other", *settings)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"init_from: {pretrained} cannot start this model" in message
    for part in ("model_spec.dim_model: 16 in", "32 here", "model_spec.num_layers: 2 in", "3 here"):
        assert part in message
    assert "input_columns: 'item', an input column of" in message and "is not one here (shop)" in message
    assert not list((small.root / "models").glob("sequifier-other-*"))


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("init_from=models/none.pt", "init_from: "),
        ("training_spec.freeze=[blocks.7]", "'blocks.7' not a group of this model; its groups: encoders, "),
        ("training_spec.freeze=[heads.price]", "'heads.price' not a group"),
        ("training_spec.freeze=[encoders,blocks,final_norm,heads,positions]", "nothing would train"),
    ],
)
def test_bad_init_from_and_freeze_are_clear_errors(small, setting, expected):
    result, _ = train(small, "bad", setting)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert expected in result.stderr.strip().splitlines()[-1]


def test_rope_has_no_positions_to_freeze(small):
    result, _ = train(
        small, "rope", "model_spec.positional_encoding=rope", "training_spec.freeze=[positions]"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "'positions' not a group" in line and "blocks.1, final_norm, heads, heads.item" in line


def test_a_search_space_takes_init_from_and_freeze():
    space = {"init_from": [None, "models/base.pt"], "training_spec.freeze": [[], ["blocks", "encoders"]]}
    ids = search.run_ids(search.expand(space, "grid", None, 0, "search.yaml"))
    configs = search.run_configs(ids, {}, "search.yaml", lambda name, point: {})
    assert "init_from-models.base.pt_freeze-.blocks.encoders." in configs
    chosen = configs["init_from-models.base.pt_freeze-.blocks.encoders."]
    assert chosen["init_from"] == "models/base.pt" and chosen["training_spec"]["freeze"] == [
        "blocks",
        "encoders",
    ]
    with pytest.raises(ConfigError) as raised:
        bad = search.run_ids(
            search.expand({"training_spec.freeze": ["blocks"]}, "grid", None, 0, "search.yaml")
        )
        search.run_configs(bad, {}, "search.yaml", lambda name, point: {})
    assert "training_spec.freeze: 'blocks' is not" in str(raised.value)
