"""Honest evaluation: a validation figure covers only the items of the validation split, whatever
the format, stride, reading (in memory or streamed) and window length; epoch 0, baselines and
accuracy against hand computations."""

import csv
import math

import numpy as np
import pytest
import torch
from conftest import items_of_splits, sequences_table
from losses_by_hand import counted, losses_by_hand, read_windows

from sequifier.model.export import load_bundle
from sequifier.model.network import ModelArgs, Transformer
from sequifier.train.objective import target_mask

W, RATIOS = 6, [0.6, 0.2, 0.2]


def test_target_mask_leaves_out_padding_context_and_early_positions():
    split_start = torch.tensor([0, 2, 5, 6])  # slots before it: padding or items of earlier splits
    mask = target_mask(split_start, seq_length=6, prediction_length=6)  # targets are slots 1..6
    assert mask.int().tolist() == [
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1],
    ]
    mask = target_mask(split_start, seq_length=6, prediction_length=2)  # slots 5 and 6
    assert mask.int().tolist() == [[1, 1], [1, 1], [1, 1], [0, 1]]


def read_metrics(project, name) -> list:
    with open(project.root / "logs" / f"sequifier-{name}-metrics.csv") as handle:
        return list(csv.DictReader(handle))


def train(project, name, **overrides) -> dict:
    return project.train_in_process(name, {"log_interval": 7}, **overrides)


def assert_matches(row: dict, by_hand: dict, targets=("item", "price")) -> None:
    assert float(row["validation_loss"]) == pytest.approx(by_hand["total"], rel=1e-5)
    for name in targets:
        assert float(row[f"validation_loss_{name}"]) == pytest.approx(by_hand[name], rel=1e-5)
    assert float(row["validation_accuracy_item"]) == pytest.approx(by_hand["accuracy_item"], rel=1e-6)


@pytest.mark.parametrize(
    "fmt, merged, in_ram, strides, seq_length",
    [
        ("parquet", True, True, [1, 1, 1], None),
        ("parquet", False, False, [2, 3, 3], None),
        ("csv", True, True, [3, 2, 1], None),
        ("pt", False, False, [1, 2, 2], None),
        ("parquet", True, True, [1, 1, 1], 4),  # a shorter seq_length than the windows'
    ],
)
def test_validation_loss_counts_only_validation_items(project, fmt, merged, in_ram, strides, seq_length):
    table = sequences_table(n_sequences=30, min_length=5, max_length=30)
    project.write_data(table)
    metadata = project.preprocess(
        seq_length=W, split_ratios=RATIOS, stride_by_split=strides, write_format=fmt, merge_output=merged,
        batches_per_file=40,
    )  # fmt: skip
    result = train(
        project, "honest", seq_length=seq_length, **{"training_spec.load_full_data_to_ram": in_ram}
    )
    rows = read_metrics(project, "honest")
    model, bundle = load_bundle(project.root / "models" / "sequifier-honest-last-1.pt")
    validation = read_windows(project.root / metadata["split_paths"][1], fmt, W)
    items = items_of_splits(table, RATIOS)
    by_hand = losses_by_hand(model, bundle, validation, items[1])
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    assert_matches(epochs[-1], by_hand)
    assert result["best_loss"] == pytest.approx(by_hand["total"], rel=1e-5)

    # epoch 0: the untrained model, built as training builds it
    torch.manual_seed(bundle["config"]["seed"])
    untrained = Transformer(ModelArgs.from_dict(bundle["model_args"])).eval()
    assert_matches(epochs[0], losses_by_hand(untrained, bundle, validation, items[1]))

    # the test can tell: counting every slot of the windows gives another figure
    every = {(s, p) for s, p in zip(table.sequenceId, table.itemPosition)}
    assert losses_by_hand(model, bundle, validation, every)["targets"] > by_hand["targets"]
    assert losses_by_hand(model, bundle, validation, every)["total"] != pytest.approx(
        by_hand["total"], rel=1e-3
    )


def test_baselines_and_their_rows(project):
    table = sequences_table(n_sequences=30, min_length=5, max_length=30)
    items = items_of_splits(table, RATIOS)
    late = [key in items[1] for key in zip(table.sequenceId, table.itemPosition)]
    table.loc[np.array(late) & (table.index % 3 > 0), "item"] = "late"  # validation only: other (id 1)
    project.write_data(table)
    metadata = project.preprocess(seq_length=W, split_ratios=RATIOS, stride_by_split=[1, 2, 2])
    train(project, "baselines", **{"training_spec.loss_weights": {"item": 2.0, "price": 1.0}})
    rows = {r["kind"]: r for r in read_metrics(project, "baselines") if r["kind"].startswith("baseline")}
    assert set(rows) == {"baseline_last_value", "baseline_training_prior", "baseline_best"}

    windows = read_windows(project.root / metadata["split_paths"][1], "parquet", W)
    values = windows["values"]
    mask = counted(windows, items[1], W)
    target_item, last_item = values["item"][:, 1:], values["item"][:, :-1]
    target_price, last_price = values["price"][:, 1:], values["price"][:, :-1]
    train_items = table[[key in items[0] for key in zip(table.sequenceId, table.itemPosition)]]
    counts = np.zeros(metadata["n_classes"]["item"])
    for value, n in train_items.item.value_counts().items():
        counts[metadata["id_maps"]["item"][value]] = n
    possible = np.zeros_like(counts)
    possible[[1, *metadata["id_maps"]["item"].values()]] = 1
    prior = (counts + 1) * possible / ((counts + 1) * possible).sum()
    cross_entropy = -np.log(prior[target_item.astype(int)[mask]]).mean()
    mode = int(np.argmax(counts))
    assert ((target_item == 1) & (last_item == 1) & mask).sum() > 10  # "other" repeated: no hit
    last_accuracy = ((target_item == last_item) & (last_item >= 3))[mask].mean()
    last_mse = ((target_price - last_price) ** 2)[mask].mean()
    mean_mse = (target_price**2)[mask].mean()  # the training mean is 0 after normalization

    prior_row, last_row, best = (
        rows["baseline_training_prior"],
        rows["baseline_last_value"],
        rows["baseline_best"],
    )
    assert float(prior_row["validation_loss_item"]) == pytest.approx(cross_entropy, rel=1e-5)
    assert float(prior_row["validation_accuracy_item"]) == pytest.approx((target_item == mode)[mask].mean())
    assert float(prior_row["validation_loss_price"]) == pytest.approx(mean_mse, rel=1e-5)
    assert float(prior_row["validation_loss"]) == pytest.approx(2 * cross_entropy + mean_mse, rel=1e-5)
    assert math.isnan(float(last_row["validation_loss_item"])) and math.isnan(
        float(last_row["validation_loss"])
    )
    assert float(last_row["validation_accuracy_item"]) == pytest.approx(last_accuracy)
    assert float(last_row["validation_loss_price"]) == pytest.approx(last_mse, rel=1e-5)
    assert float(best["validation_loss_price"]) == pytest.approx(min(last_mse, mean_mse), rel=1e-5)
    assert float(best["validation_accuracy_item"]) == pytest.approx(
        max(last_accuracy, (target_item == mode)[mask].mean())
    )
    assert float(best["validation_loss"]) == pytest.approx(
        2 * cross_entropy + min(last_mse, mean_mse), rel=1e-5
    )


def test_data_of_another_version_is_refused_with_advice(project):
    import json

    import pyarrow.parquet as pq

    from sequifier.errors import DataError

    project.write_data(sequences_table(n_sequences=10))
    metadata = project.preprocess(seq_length=W, split_ratios=RATIOS)
    validation = project.root / metadata["split_paths"][1]
    written = pq.read_table(validation)
    pq.write_table(written.replace_schema_metadata(None), validation)  # as sequifier-metadata/2 wrote them
    with pytest.raises(DataError, match="carry no fingerprint .* run `sequifier preprocess` again") as error:
        train(project, "old")
    assert str(validation) in str(error.value)
    pq.write_table(written.drop_columns(["contextSlots"]), validation)  # as sequifier-metadata/1 wrote them
    with pytest.raises(DataError, match="have no contextSlots .* run `sequifier preprocess` again") as error:
        train(project, "old")
    assert str(validation) in str(error.value)

    path = project.root / "configs" / "metadata_configs" / "table.json"
    content = json.loads(path.read_text())
    for old in ["sequifier-metadata/1", "sequifier-metadata/2"]:
        path.write_text(json.dumps({**content, "format": old}))
        with pytest.raises(DataError, match=f"format {old}, written by an earlier version .* preprocess"):
            train(project, "old")

    path.write_text(json.dumps({**content, "format": "sequifier-metadata/4"}))
    with pytest.raises(DataError, match="format sequifier-metadata/4, written by a newer version .* upgrade"):
        train(project, "newer")
    incomplete = {k: v for k, v in content.items() if k != "id_maps"}
    path.write_text(json.dumps(incomplete))
    with pytest.raises(DataError, match="table.json: the metadata lacks id_maps"):
        train(project, "incomplete")
    edited = {**content, "id_maps": {**content["id_maps"], "item": {"v1": 3, "v0": 4}}}
    path.write_text(json.dumps(edited))
    with pytest.raises(DataError, match="table.json: the metadata was changed after it was written"):
        train(project, "edited")


@pytest.mark.parametrize("in_ram", [True, False])
def test_a_validation_split_without_windows_is_an_error(project, in_ram):
    from sequifier.errors import DataError

    project.write_data(sequences_table(n_sequences=10, min_length=5, max_length=9))
    metadata = project.preprocess(seq_length=W, split_ratios=[0.95, 0.05])
    assert metadata["n_windows"]["validation"] == 0
    with pytest.raises(DataError, match="table-split1.parquet: holds no windows"):
        train(project, "empty", **{"training_spec.load_full_data_to_ram": in_ram})
