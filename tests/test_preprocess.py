"""End to end: a table in, windows and metadata out, checked against the table itself."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import items_of_splits, sequences_table

W = 4


def decode(windows: pd.DataFrame, metadata: dict) -> dict:
    """{(sequenceId, subsequenceId, column): (startItemPosition, original values or None for padding)}."""
    inverse = {c: {v: k for k, v in m.items()} for c, m in metadata["id_maps"].items()}
    decoded = {}
    values = windows[[str(i) for i in range(W, -1, -1)]].to_numpy()
    for row, window in zip(windows.itertuples(index=False), values):
        column = row.inputCol
        if column in inverse:
            items = [None if v == 0 else inverse[column][int(v)] for v in window]
        else:
            stats = metadata["selected_columns_statistics"][column]
            items = [float(v) * stats["std"] + stats["mean"] for v in window]
        decoded[(row.sequenceId, row.subsequenceId, column)] = (row.startItemPosition, items)
    return decoded


def assert_windows_match_table(windows, metadata, table, split_items):
    """Every window slot holds the table's value at its position (or padding before the sequence)."""
    by_key = table.set_index(["sequenceId", "itemPosition"])
    first = table.groupby("sequenceId").itemPosition.min()
    for (sequence, _, column), (start, items) in decode(windows, metadata).items():
        for t, value in enumerate(items):
            position = start + t
            if position < first[sequence]:
                assert value in (
                    None,
                    pytest.approx(metadata["selected_columns_statistics"].get(column, {}).get("mean", 0)),
                )
                continue
            expected = by_key.loc[(sequence, position), column]
            if isinstance(value, float):
                assert value == pytest.approx(float(expected), abs=1e-4)
            else:
                assert str(value) == str(expected)
        assert (sequence, start + W) in split_items, "the window's last item belongs to its split"


def test_windows_hold_the_tables_values(project):
    table = sequences_table()
    project.write_data(table)
    metadata = project.preprocess(split_ratios=[0.6, 0.2, 0.2], stride_by_split=[2, 1, 1])
    splits = items_of_splits(table, [0.6, 0.2, 0.2])
    for k in range(3):
        windows = project.split(k)
        assert list(windows.columns[:7]) == [
            "sequenceId", "subsequenceId", "startItemPosition", "lastItemPosition", "positionStep",
            "contextSlots", "inputCol",
        ]  # fmt: skip
        assert list(windows.columns[7:]) == [str(i) for i in range(W, -1, -1)]
        # consecutive itemPositions: the last item W on from the first slot, one step before it
        assert (windows.lastItemPosition == windows.startItemPosition + W).all()
        assert (windows.positionStep == 1).all()
        assert len(windows) == 3 * metadata["n_windows"][metadata["split_names"][k]]
        assert_windows_match_table(windows, metadata, table, splits[k])
        for window in windows[windows.inputCol == "item"].itertuples():
            own = [(window.sequenceId, window.startItemPosition + t) in splits[k] for t in range(W + 1)]
            assert own == [t >= window.contextSlots for t in range(W + 1)], "context, then the split's items"
    assert metadata["n_rows"] == len(table) and metadata["n_sequences"] == table.sequenceId.nunique()
    assert sum(metadata["n_items"].values()) == len(table)


def test_metadata_holds_id_maps_and_statistics(project):
    table = sequences_table()
    project.write_data(table)
    project.preprocess()
    metadata = project.metadata()
    assert metadata["column_types"] == {"item": "categorical", "code": "categorical", "price": "real"}
    assert metadata["id_maps"]["item"] == {f"v{i}": 3 + i for i in range(6)}
    assert metadata["id_maps"]["code"] == {str(100 + i): 3 + i for i in range(6)}
    assert metadata["n_classes"] == {"item": 9, "code": 9}
    training = items_of_splits(table, [0.8, 0.1, 0.1])[0]
    train = table[[key in training for key in zip(table.sequenceId, table.itemPosition)]]
    stats = metadata["selected_columns_statistics"]["price"]
    assert stats["mean"] == pytest.approx(train.price.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(train.price.std(), rel=1e-12)
    counts = train.item.value_counts()
    assert metadata["training_class_counts"]["item"] == [0, 0, 0, *(counts[f"v{i}"] for i in range(6))]
    assert metadata["split_paths"] == [f"data/table-split{k}.parquet" for k in range(3)]
    assert metadata["seq_length"] == W and metadata["input_hash"].startswith("blake2b:")
    windows = project.split(0)
    real = windows[windows.inputCol == "price"][[str(i) for i in range(W + 1)]].to_numpy()
    assert real.dtype == np.float32


def test_no_normalization_keeps_raw_values(project):
    table = sequences_table()
    project.write_data(table)
    project.preprocess(normalize_real_columns=False, selected_columns=["price"])
    windows = project.split(0)
    assert set(windows.inputCol) == {"price"}
    last = windows.groupby("sequenceId").tail(1).iloc[0]
    expected = table[
        (table.sequenceId == last.sequenceId) & (table.itemPosition == last.startItemPosition + W)
    ]
    assert last["0"] == pytest.approx(expected.price.item())


def test_between_sequence_split_is_whole_sequences_and_seeded(project):
    table = sequences_table(n_sequences=200, min_length=8, max_length=12)
    project.write_data(table)
    project.preprocess(split_method="between_sequence", seed=3)
    owners = [set(project.split(k).sequenceId) for k in range(3)]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert set().union(*owners) == set(table.sequenceId)
    assert 0.7 < len(owners[0]) / 200 < 0.9
    first = [project.split(k).to_numpy().tolist() for k in range(3)]
    project.preprocess(split_method="between_sequence", seed=3)
    assert [project.split(k).to_numpy().tolist() for k in range(3)] == first
    project.preprocess(split_method="between_sequence", seed=4)
    assert set(project.split(1).sequenceId) != owners[1]


def _output_bytes(project, name="table"):
    files = sorted((project.root / "data").rglob(f"{name}-split*"))
    return {p.relative_to(project.root).as_posix(): p.read_bytes() for p in files if p.is_file()}


@pytest.mark.parametrize(
    "fmt, method, string_ids, fit_on_all_splits",
    [
        ("parquet", "within_sequence", False, False),
        ("pt", "between_sequence", False, False),
        ("csv", "between_sequence", True, False),
        ("parquet", "within_sequence", False, True),
    ],
)
def test_outputs_do_not_depend_on_cores_or_parts(project, fmt, method, string_ids, fit_on_all_splits):
    table = sequences_table(n_sequences=80)
    if string_ids:
        table["sequenceId"] = "séquence-" + table.sequenceId.astype(str)
    project.write_data(table)
    options = {"write_format": fmt, "split_method": method, "batches_per_file": 50}
    options["fit_on_all_splits"] = fit_on_all_splits
    project.preprocess(n_cores=1, n_partitions=1, **options)
    reference, metadata = _output_bytes(project), project.metadata()
    project.preprocess(n_cores=2, n_partitions=7, **options)
    assert _output_bytes(project) == reference
    assert project.metadata() == metadata


def test_pt_shards_hold_the_same_windows_as_parquet(project):
    project.write_data(sequences_table())
    project.preprocess(write_format="pt", batches_per_file=16)
    shards = sorted((project.root / "data" / "table-split0").glob("part-*.pt"))
    assert len(shards) > 1
    loaded = [torch.load(s) for s in shards]
    assert all(len(s["sequenceId"]) <= 16 for s in loaded)
    project.preprocess()
    windows = project.split(0)
    for column in ["item", "code", "price"]:
        tensor = torch.cat([s["values"][column] for s in loaded])
        expected = windows[windows.inputCol == column][[str(i) for i in range(W, -1, -1)]].to_numpy()
        assert tensor.dtype == (torch.float32 if column == "price" else torch.int64)
        np.testing.assert_array_equal(tensor.numpy(), expected.astype(tensor.numpy().dtype))
    sequence_ids = torch.cat([s["sequenceId"] for s in loaded]).numpy()
    np.testing.assert_array_equal(sequence_ids, windows.sequenceId.to_numpy()[::3])


def test_csv_output_and_folder_of_shards(project):
    project.write_data(sequences_table())
    project.preprocess(write_format="csv")
    csv = project.split(1, fmt="csv")
    assert set(csv.metadataFingerprint) == {project.metadata()["fingerprint"]}  # in every row
    project.preprocess(merge_output=False, batches_per_file=10)
    shards = sorted((project.root / "data" / "table-split1").glob("part-*.parquet"))
    folder = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    assert len(folder) == len(csv) and folder.sequenceId.tolist() == csv.sequenceId.tolist()
    values = [str(i) for i in range(W, -1, -1)]
    np.testing.assert_allclose(folder[values].to_numpy(float), csv[values].to_numpy(float), atol=1e-6)
    for column in ["startItemPosition", "lastItemPosition", "positionStep", "contextSlots"]:
        assert folder[column].tolist() == csv[column].tolist()


def test_parquet_folder_input_and_process_by_file(project):
    table = sequences_table(n_sequences=40)
    project.write_data(table)
    project.preprocess()
    reference = [project.split(k) for k in range(3)]
    folder = project.root / "data" / "parts"
    folder.mkdir()
    for i, ids in enumerate(np.array_split(np.arange(40), 3)):
        table[table.sequenceId.isin(ids)].to_parquet(folder / f"chunk-{i}.parquet", index=False)
    for by_file in (False, True):
        project.preprocess(data_path="data/parts", process_by_file=by_file)
        for k in range(3):
            got = project.split(k, name="parts")
            key = ["sequenceId", "subsequenceId", "inputCol"]
            pd.testing.assert_frame_equal(
                got.sort_values(key).reset_index(drop=True),
                reference[k].sort_values(key).reset_index(drop=True),
            )


def test_string_sequence_ids_and_max_rows(project):
    table = sequences_table(n_sequences=20)
    table["sequenceId"] = "user-" + table.sequenceId.astype(str)
    project.write_data(table)
    metadata = project.preprocess(max_rows=100)
    assert metadata["n_rows"] == 100
    assert set(project.split(0).sequenceId) <= set(table.sequenceId[:100])


def test_precomputed_id_map_is_used_and_unseen_values_get_other(project, caplog):
    project.write_data(sequences_table())
    maps = project.root / "configs" / "id_maps"
    maps.mkdir(parents=True)
    (maps / "item.json").write_text(json.dumps({"v0": 10, "v1": 11, "v2": 12}))
    metadata = project.preprocess(use_precomputed_maps=["item"])
    assert metadata["id_maps"]["item"] == {"v0": 10, "v1": 11, "v2": 12}
    assert metadata["n_classes"]["item"] == 13
    assert "column 'item': 3 distinct values are not in the precomputed map" in caplog.text
    ids = set(project.split(0).query("inputCol == 'item'").iloc[:, 7:].to_numpy().ravel())
    assert ids <= {0, 1, 10, 11, 12} and 1 in ids


def test_continue_preprocessing_skips_finished_parts(project, monkeypatch):
    from sequifier import config as stage_config
    from sequifier.preprocess import pipeline as preprocess
    from sequifier.preprocess import steps as preprocess_steps

    project.write_data(sequences_table(n_sequences=60))
    project.preprocess(n_partitions=3)
    reference = _output_bytes(project)
    config = stage_config.resolve(
        "preprocess", project.config(n_partitions=3, continue_preprocessing=True), "test"
    )
    original, made = preprocess_steps.windows, []

    def interrupted(plan, metadata, p):
        if p == 2:
            raise KeyboardInterrupt
        made.append(p)
        original(plan, metadata, p)

    monkeypatch.setattr(preprocess_steps, "windows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess.run(config)
    work = project.root / "data" / ".table-work"
    assert (work / "windows" / "part-1").is_dir() and not (work / "windows" / "part-2").exists()
    made.clear()
    monkeypatch.setattr(
        preprocess_steps, "windows", lambda plan, metadata, p: [made.append(p), original(plan, metadata, p)]
    )
    monkeypatch.setattr(preprocess_steps, "scan", lambda plan, p: pytest.fail("scan ran again"))
    preprocess.run(config)
    assert made == [2], "only the unfinished part is cut into windows"
    assert not work.exists() and _output_bytes(project) == reference


def test_continue_refuses_a_work_folder_of_other_inputs(project, monkeypatch):
    from sequifier import config as stage_config
    from sequifier.errors import ConfigError
    from sequifier.preprocess import pipeline as preprocess
    from sequifier.preprocess import steps as preprocess_steps

    project.write_data(sequences_table(n_sequences=30))
    maps = project.root / "configs" / "id_maps"
    maps.mkdir(parents=True)
    (maps / "item.json").write_text(json.dumps({"v0": 10, "v1": 11}))
    values = project.config(n_partitions=2, continue_preprocessing=True, use_precomputed_maps=["item"])
    config = stage_config.resolve("preprocess", values, "test")

    def interrupted(plan, metadata, p):
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess_steps, "windows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preprocess.run(config)
    (maps / "item.json").write_text(json.dumps({"v0": 20, "v1": 21}))
    with pytest.raises(ConfigError, match="was made from another config or input"):
        preprocess.run(config)


def test_a_work_path_that_holds_other_files_is_left_alone(project):
    project.write_data(sequences_table())
    project.preprocess(work_path="data")
    assert (project.root / "data" / "table.csv").is_file()
    assert not (project.root / "data" / ".table-work").exists()


def test_categorical_floats_read_the_same_from_csv_and_parquet(project):
    table = pd.DataFrame(
        {"sequenceId": [1] * 6, "itemPosition": range(6), "level": [1.0, 2.5, 1.0, 2.5, 3.0, 1.0]}
    )
    project.write_data(table, "t.csv")
    project.write_data(table, "t.parquet")
    from_csv = project.preprocess(data_path="data/t.csv", column_types={"level": "categorical"})
    from_parquet = project.preprocess(
        data_path="data/t.parquet",
        column_types={"level": "categorical"},
        output_path="data/from-parquet",  # the inputs share a name: the outputs must not
        metadata_config_path="configs/t-parquet.json",
    )
    assert from_csv["id_maps"] == from_parquet["id_maps"] == {"level": {"1": 3, "2.5": 4, "3": 5}}


def test_streamed_csv_reading_gives_the_same_windows(project, monkeypatch):
    """Large CSV files are read in small blocks (bounded memory); the windows do not change."""
    from sequifier.preprocess import reader as input_table

    data = sequences_table(n_sequences=60)
    data["itemPosition"] = data["itemPosition"].astype(float)  # integral floats are fine positions
    project.write_data(data)
    project.preprocess()
    reference = _output_bytes(project)
    monkeypatch.setattr(input_table, "CSV_WHOLE_BYTES", 0)
    monkeypatch.setattr(input_table, "CSV_BLOCK_BYTES", 2048)
    monkeypatch.setattr(input_table, "BATCH_ROWS", 300)
    project.preprocess(n_partitions=3)
    assert _output_bytes(project) == reference


def test_positions_written_as_text_or_integral_floats(project):
    rows = {"sequenceId": [1] * 6, "item": list("abcabc")}
    project.write_data(pd.DataFrame({**rows, "itemPosition": ["0", "+1", " 2 ", "3", "4", "5"]}), "t.parquet")
    from_text = project.preprocess(data_path="data/t.parquet", split_ratios=[1.0])
    windows = pd.read_parquet(project.root / "data" / "t-split0.parquet")
    project.write_data(pd.DataFrame({**rows, "itemPosition": [0.0, 1, 2, 3, 4, 5]}), "t.parquet")
    from_floats = project.preprocess(data_path="data/t.parquet", split_ratios=[1.0])
    assert from_text["n_windows"] == from_floats["n_windows"] == {"train": 2}
    pd.testing.assert_frame_equal(windows, pd.read_parquet(project.root / "data" / "t-split0.parquet"))


def test_a_worker_that_dies_is_a_clear_error():
    import os

    from sequifier.errors import ResourceError
    from sequifier.preprocess.pipeline import _Runner

    runner = _Runner(2)
    runner.start()
    try:
        with pytest.raises(ResourceError, match="a worker process died during scan"):
            runner.map("scan", os._exit, [3])
    finally:
        runner.close()
