"""Fine-tuning: `init_from` a pretrained model, `training_spec.freeze` of groups of the network."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import Project, run_cli

from sequifier import config
from sequifier.errors import ConfigError
from sequifier.model.export import load_bundle
from sequifier.model.network import ModelArgs, Transformer
from sequifier.search import space as search
from sequifier.train import run
from sequifier.train.transfer import Transfer, freeze, read_source

N_VALUES = 8
PRETRAIN = 60  # sequences of the large data set


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


def train_here(project: Project, name: str, **overrides) -> list:
    """`sequifier train` in this process (a run the test compares with, not the one it tests);
    its metrics rows without the baselines."""
    values = {"project_root": str(project.root), "model_name": name, **overrides}
    run(config.load("train", project.root / "configs" / "train.yaml", values))
    with open(project.root / "logs" / f"sequifier-{name}-metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if not row["kind"].startswith("baseline")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A model trained on a larger data set of the chain (the bundle of its last epoch)."""
    project = prepared(tmp_path_factory.mktemp("pretrain") / "p", chain(PRETRAIN, 30, seed=1), epochs=2)
    train_here(project, "base")
    return next((project.root / "models").glob("sequifier-base-last-*.pt"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Project:
    """A small data set of the same chain, with a value the large one never saw (a8: it sorts
    first, so the id of every other value moves)."""
    return prepared(tmp_path_factory.mktemp("small") / "p", chain(6, 30, seed=2, extra="a8"))


def test_fine_tuned_with_frozen_blocks_beats_scratch_and_keeps_the_blocks(pretrained, small):
    result, tuned = train(small, "tuned", f"init_from={pretrained}", "training_spec.freeze=[blocks]")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    log = (small.root / "logs" / "sequifier-tuned.log").read_text()  # what the console said, too
    assert f"init_from {pretrained}" in log
    assert "head of target 'item': the rows of 8 values matched by value, 1 new value(s) fresh" in log
    assert "encoder of input column 'item': the rows of 8 values matched by value" in log
    frozen = [line for line in log.splitlines() if "frozen: blocks (" in line]
    assert len(frozen) == 1 and frozen[0].split("frozen: ")[1] in result.stderr

    source, _ = load_bundle(pretrained)
    model, bundle = load_bundle(next((small.root / "models").glob("sequifier-tuned-last-*.pt")))
    before, after = source.state_dict(), model.state_dict()
    blocks = [key for key in after if key.startswith("blocks.")]
    assert blocks and all(torch.equal(before[key], after[key]) for key in blocks)  # bit-identical
    assert not torch.equal(before["final_norm.weight"], after["final_norm.weight"])  # it trained
    assert set(bundle["metadata"]["id_maps"]["item"]) == {"a8", *(f"v{i}" for i in range(8))}

    scratch = train_here(small, "scratch")
    assert [row["epoch"] for row in tuned] == [row["epoch"] for row in scratch] == ["0", "1", "2"]
    assert float(tuned[-1]["validation_loss"]) < 0.8 * float(scratch[-1]["validation_loss"])


def test_a_masked_fine_tuning_of_a_causal_model_resumes_without_init_from(pretrained, small, tmp_path):
    copy = tmp_path / "source.pt"
    copy.write_bytes(pretrained.read_bytes())
    settings = [
        f"init_from={copy}",
        "objective=masked",
        "training_spec.freeze=[encoders,blocks.0]",
        "training_spec.epochs=1",
    ]
    result, _ = train(small, "resumed", *settings)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    log = (small.root / "logs" / "sequifier-resumed.log").read_text()
    assert f"init_from: objective: causal in {copy}, masked here: the blocks learned causal" in log
    assert "init_from: frozen blocks learned causal attention (to earlier items); they will not adapt" in log
    copy.unlink()  # a resumed run has its checkpoint: the source is not needed any more
    more = [*settings[:-1], "training_spec.epochs=2", "training_spec.continue_training=true"]
    result, rows = train(small, "resumed", *more)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert "resuming from" in result.stderr and "init_from" not in result.stderr

    # the frozen encoder holds the pretrained rows, matched by value through the two id maps
    source, before = load_bundle(pretrained)
    model, after = load_bundle(next((small.root / "models").glob("sequifier-resumed-last-*.pt")))
    assert after["model_args"]["objective"] == "masked"
    old_ids, new_ids = before["metadata"]["id_maps"]["item"], after["metadata"]["id_maps"]["item"]
    old_rows, new_rows = source.encoders.encoders[0].weight, model.encoders.encoders[0].weight
    for value, new_id in new_ids.items():
        if value in old_ids:
            assert new_id != old_ids[value] and torch.equal(new_rows[new_id], old_rows[old_ids[value]])
    # the optimizer holds only what trains: not the encoder, not the first block
    state = torch.load(next((small.root / "checkpoints").glob("sequifier-resumed-*.pt")), weights_only=True)
    trainable = [key for key in model.state_dict() if not key.startswith(("encoders.", "blocks.0."))]
    assert len(state["optimizer"]["state"]) == len(trainable)


def test_a_model_of_another_structure_is_refused_when_planned_naming_every_mismatch(pretrained, small):
    settings = [
        f"init_from={pretrained}",
        "model_spec.dim_model=32",
        "model_spec.num_layers=3",
        "input_columns=[shop]",
        "training_data_path=data/missing.parquet",  # refused before any window is read
    ]
    result, _ = train(small, "other", *settings)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert f"configs/train.yaml: init_from: {pretrained} cannot start this model" in message
    for part in ("model_spec.dim_model: 16 in", "32 here", "model_spec.num_layers: 2 in", "3 here"):
        assert part in message
    assert "input_columns: 'item', an input column of" in message and "is not one here (shop)" in message
    assert "missing.parquet" not in result.stderr
    for folder in ("models", "checkpoints", "logs"):
        assert not list((small.root / folder).glob("sequifier-other*"))


def test_a_checkpoint_of_the_model_name_a_fresh_run_removes_is_refused(pretrained, small):
    own = small.root / "checkpoints" / "sequifier-again-epoch-2.pt"
    own.parent.mkdir(exist_ok=True)
    own.write_bytes(next((pretrained.parent.parent / "checkpoints").glob("sequifier-base-*.pt")).read_bytes())
    result, _ = train(small, "again", "init_from=checkpoints/sequifier-again-epoch-2.pt")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert f"init_from: {own} is a checkpoint of model_name again, which this run starts anew" in message
    assert "copy it out of" in message and "training_spec.continue_training: true" in message
    assert own.is_file() and not list((small.root / "models").glob("sequifier-again-*"))


@pytest.mark.parametrize(
    "settings, expected",
    [
        (["init_from=models/none.pt"], "/models/none.pt: not a file (expected a pt model bundle or"),
        (
            ["model_spec.positional_encoding=rope", "training_spec.freeze=[positions,blocks.7,heads.price]"],
            "'positions', 'blocks.7', 'heads.price' not a group of this model; its groups: encoders, "
            "blocks, blocks.0, blocks.1, final_norm, heads, heads.item",
        ),
        (["training_spec.freeze=[encoders,blocks,final_norm,heads,positions]"], "nothing would train"),
    ],
)
def test_bad_init_from_and_freeze_are_clear_errors_before_any_window_is_read(small, settings, expected):
    result, _ = train(small, "bad", *settings, "training_data_path=data/missing.parquet")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "configs/train.yaml: " in line and expected in line and "missing.parquet" not in result.stderr


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


def shapes(**changes) -> ModelArgs:
    """A small model of a categorical and a real column, both inputs and targets."""
    columns = (("item", "categorical", 11, 8), ("price", "real", 0, 8))
    return ModelArgs(
        input_columns=columns,
        target_columns=tuple(column[:3] for column in columns),
        seq_length=8, dim_model=16, n_head=2, n_kv_heads=2, dim_feedforward=16, num_layers=1,
        **changes,
    )  # fmt: skip


def transferred(old: ModelArgs, new: ModelArgs) -> tuple:
    """(source model, new model before, new model after, notes) of a transfer between the two."""
    torch.manual_seed(0)
    source, model = Transformer(old), Transformer(new)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    transfer = Transfer(Path("source.pt"), old, new, {}, {})
    transfer.check()
    with torch.no_grad():
        transfer.apply(model, source.state_dict())
    return source.state_dict(), before, model.state_dict(), transfer.notes


def test_objective_offset_and_gaussian_heads_are_bridged_with_a_note():
    old, before, after, notes = transferred(shapes(), shapes(objective="masked"))
    assert "objective: causal in source.pt, masked here: the blocks learned causal attention" in notes[0]
    assert all(torch.equal(old[key], after[key]) for key in old)  # every weight of the source taken
    assert torch.equal(after["encoders.mask_vectors.0"], before["encoders.mask_vectors.0"])
    assert "mask vector of input column 'price': fresh (not in the source model)" in notes

    old, _, after, notes = transferred(shapes(objective="masked"), shapes(objective="masked"))
    assert all(torch.equal(old[key], after[key]) for key in old) and not notes

    old, _, after, notes = transferred(shapes(objective="masked"), shapes())
    assert "objective: masked in source.pt, causal here" in notes[0]
    assert "not used: the mask vector(s) of 'price', not masked here" in notes
    assert all(torch.equal(old[key], after[key]) for key in after)  # the mask vector left out

    old, _, after, notes = transferred(shapes(), shapes(target_offset=3))
    assert notes == [
        "target_offset: 1 in source.pt, 3 here: the heads learned to predict the item 1 step(s) on and "
        "start predicting 3"
    ]
    assert all(torch.equal(old[key], after[key]) for key in old)

    old, before, after, notes = transferred(shapes(), shapes(gaussian_targets=("price",)))
    assert "head of target 'price': the mean taken; the variance fresh" in notes[0]
    for part in ("weight", "bias"):
        assert torch.equal(after[f"heads.1.{part}"][0], old[f"heads.1.{part}"][0])
        assert torch.equal(after[f"heads.1.{part}"][1], before[f"heads.1.{part}"][1])
    assert not torch.equal(after["heads.1.weight"][1], old["heads.1.weight"][0])

    old, _, after, notes = transferred(shapes(gaussian_targets=("price",)), shapes())
    assert "the source's variance not used" in notes[0]
    assert torch.equal(after["heads.1.weight"], old["heads.1.weight"][:1])


def test_a_training_checkpoint_is_a_source_too(pretrained):
    path = next((pretrained.parent.parent / "checkpoints").glob("sequifier-base-*.pt"))
    args, weights, metadata = read_source(path)
    bundled, bundled_weights, _ = read_source(pretrained)
    assert args == bundled and weights.keys() == bundled_weights.keys()
    assert set(metadata["id_maps"]["item"]) == {f"v{i}" for i in range(8)}


@pytest.mark.parametrize("changes", [{"objective": "masked"}, {"positional_encoding": "rope"}])
def test_the_groups_of_freeze_cover_every_weight(changes):
    """What check_freeze calls `nothing would train` is a model whose every weight is frozen."""
    model = Transformer(shapes(**changes))
    freeze(
        model,
        ["encoders", "positions"][: 1 + (model.positions is not None)] + ["blocks.0", "final_norm", "heads"],
    )
    assert not [name for name, weight in model.named_parameters() if weight.requires_grad]
