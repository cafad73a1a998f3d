"""The encoding is fitted on the training split: id maps and real-column statistics never see
validation or test items unless fit_on_all_splits asks for it."""

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import sequences_table

W = 4


def shifting_table(n_sequences=20, length=50, seed=0):
    """`level` jumps from about 0 to about 100 after the training part (80%); the value `new` of
    `item` appears only in the test part (the last 10%)."""
    rng = np.random.default_rng(seed)
    frames = []
    for sequence in range(n_sequences):
        level = np.where(np.arange(length) < 40, rng.normal(0, 1, length), rng.normal(100, 1, length))
        item = rng.choice(["a", "b", "c"], size=length).astype(object)
        item[45 + sequence % 5] = "new"
        frames.append(
            pd.DataFrame(
                {"sequenceId": sequence, "itemPosition": np.arange(length), "item": item, "level": level}
            )
        )
    return pd.concat(frames, ignore_index=True)


def decoded_items(project, k):
    windows = project.split(k)
    return windows[windows.inputCol == "item"][[str(i) for i in range(W, -1, -1)]].to_numpy()


def test_statistics_and_id_maps_come_from_the_training_split(project, caplog):
    table = shifting_table()
    project.write_data(table)
    with caplog.at_level(logging.INFO, logger="sequifier"):
        metadata = project.preprocess(seq_length=W)
    train = table[table.itemPosition < 40]
    stats = metadata["selected_columns_statistics"]["level"]
    assert stats["mean"] == pytest.approx(train.level.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(train.level.std(), rel=1e-12)
    assert metadata["training_statistics"] == metadata["selected_columns_statistics"]
    assert metadata["id_maps"]["item"] == {"a": 3, "b": 4, "c": 5}
    assert metadata["training_class_counts"]["item"] == [0, 0, 0, *train.item.value_counts().sort_index()]
    assert metadata["other_values"] == {
        "item": {"values": 1, "items": {"train": 0, "validation": 0, "test": 20}, "examples": ["new"]}
    }
    assert "read as other (not in the id map): item 1 values (20 items)" in caplog.text
    assert "column 'item': 1 distinct values are not in the training split" in caplog.text
    assert 1 in decoded_items(project, 2) and 1 not in decoded_items(project, 0)
    # the training windows are normalized by the training items alone: about mean 0, std 1
    windows = project.split(0)
    level = windows[windows.inputCol == "level"]["0"].to_numpy()
    assert abs(level.mean()) < 0.2 and 0.8 < level.std() < 1.2


def test_fit_on_all_splits_fits_the_whole_table(project):
    table = shifting_table()
    project.write_data(table)
    metadata = project.preprocess(seq_length=W, fit_on_all_splits=True)
    assert metadata["selected_columns_statistics"]["level"]["mean"] == pytest.approx(table.level.mean())
    assert metadata["training_statistics"]["level"]["mean"] == pytest.approx(
        table[table.itemPosition < 40].level.mean()
    )
    assert metadata["id_maps"]["item"] == {"a": 3, "b": 4, "c": 5, "new": 6}
    assert metadata["other_values"] == {} and 1 not in decoded_items(project, 2)


def test_between_sequence_statistics_come_from_the_training_sequences(project):
    table = sequences_table(n_sequences=60)
    project.write_data(table)
    metadata = project.preprocess(seq_length=W, split_method="between_sequence", seed=5)
    training = set(project.split(0).sequenceId)
    assert 0 < len(training) < 60
    train = table[table.sequenceId.isin(training)]
    assert metadata["selected_columns_statistics"]["price"]["mean"] == pytest.approx(train.price.mean())
    assert metadata["selected_columns_statistics"]["price"]["std"] == pytest.approx(train.price.std())
