"""`sequifier infer`: every output's format and values, checked against the model run by hand."""

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from sequifier import config
from sequifier.infer import run
from sequifier.make import EXAMPLE_STATES
from sequifier.model.export import bundle_checksum, load_bundle
from sequifier.model.network import EmbeddingHead, GenerativeHead, ModelArgs, Transformer

W = 16  # the example's window: 16 items, then the one predicted


@pytest.fixture
def trained(trained_project):
    """The walkthrough's project, trained (conftest); each test writes to its own output folder."""
    return trained_project


def infer(project, output, **overrides) -> dict:
    overrides = {"project_root": str(project), "output_path": output, **overrides}
    return run(config.load("infer", project / "configs" / "infer.yaml", overrides))


def model_file(project, suffix="pt", embedding=False) -> str:
    label = "best-embedding" if embedding else "best"
    (path,) = (project / "models").glob(f"sequifier-default-{label}-[0-9]*.{suffix}")
    return str(path.relative_to(project))


def split_windows(project, split=2) -> pd.DataFrame:
    return pd.read_parquet(project / "data" / f"example-split{split}.parquet")


def window_arrays(windows: pd.DataFrame, columns: list, metadata: dict) -> dict:
    """{column: [windows, W + 1]} from the wide table, read with pandas (not sequifier's reader)."""
    values = [str(i) for i in range(W, -1, -1)]
    return {c: windows[windows.inputCol == c][values].to_numpy() for c in columns}


def by_hand(project, embedding=False, ids=None):
    """The bundle's network applied to the test windows directly: ids, de-normalized prices, or
    embeddings; `ids` changes the item ids first."""
    model, bundle = load_bundle(project / model_file(project, embedding=embedding))
    metadata = bundle["metadata"]
    windows = split_windows(project)
    arrays = window_arrays(windows, ["itemId", "price"], metadata)
    if ids is not None:
        arrays["itemId"] = ids(arrays["itemId"])
    cut = slice(1, None) if embedding else slice(None, -1)
    inputs = (
        torch.tensor(arrays["itemId"][:, cut], dtype=torch.int32),
        torch.tensor(arrays["price"][:, cut]).float(),
    )
    with torch.no_grad():
        if embedding:
            return EmbeddingHead(model)(*inputs).numpy()
        logits, price = GenerativeHead(model)(*inputs)
    by_id = {v: k for k, v in metadata["id_maps"]["itemId"].items()}
    stats = metadata["selected_columns_statistics"]["price"]
    items = [by_id[i] for i in logits[:, 3:].argmax(1).numpy() + 3]
    return items, price.numpy() * stats["std"] + stats["mean"]


def test_predictions_are_the_next_items_in_the_input_format(trained):
    infer(trained, "out-pt")
    predictions = pd.read_csv(trained / "out-pt/predictions/sequifier-default-best-predictions.csv")
    assert list(predictions.columns) == ["sequenceId", "itemPosition", "itemId", "price"]
    windows = split_windows(trained)
    first_rows = windows[windows.inputCol == "itemId"]
    assert len(predictions) == len(first_rows) == 454
    assert (predictions.sequenceId.to_numpy() == first_rows.sequenceId.to_numpy()).all()
    assert (predictions.itemPosition.to_numpy() == first_rows.startItemPosition.to_numpy() + W).all()
    data = pd.read_csv(trained / "data/example.csv").set_index(["sequenceId", "itemPosition"])
    actual = data.loc[list(zip(predictions.sequenceId, predictions.itemPosition))]  # each is a real item
    assert set(predictions.itemId) <= set(EXAMPLE_STATES)
    items, prices = by_hand(trained)
    assert list(predictions.itemId) == items
    np.testing.assert_allclose(predictions.price, prices, rtol=1e-5)
    # on the original scale, and better than the test items' mean price as a guess
    assert abs(predictions.price.mean() - actual.price.mean()) < 2.0
    errors = (predictions.price.to_numpy() - actual.price.to_numpy()) ** 2
    assert errors.mean() < ((actual.price - actual.price.mean()) ** 2).mean()
    assert (predictions.itemId.to_numpy() == actual.itemId.to_numpy()).mean() > 0.35  # 5 classes


def test_probabilities_sum_to_one_and_their_argmax_is_the_prediction(trained):
    infer(trained, "out-probs", write_format="parquet")
    predictions = pd.read_parquet(
        trained / "out-probs/predictions/sequifier-default-best-predictions.parquet"
    )
    probabilities = pd.read_parquet(
        trained / "out-probs/probabilities/sequifier-default-best-itemId-probabilities.parquet"
    )
    assert list(probabilities.columns) == ["sequenceId", "itemPosition", *sorted(EXAMPLE_STATES)]
    classes = probabilities[sorted(EXAMPLE_STATES)]
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, atol=1e-9)
    assert (classes.to_numpy() > 0).all()
    assert list(classes.idxmax(axis=1)) == list(predictions.itemId)
    assert (probabilities.itemPosition == predictions.itemPosition).all()


@pytest.mark.parametrize("suffix", ["pt", "onnx"])
def test_mixed_targets_give_probabilities_for_the_categorical_one_only(trained, suffix):
    """A categorical and a real target listed: predictions of both, probabilities of the categorical."""
    output = f"out-mixed-{suffix}"
    written = infer(
        trained,
        output,
        model_path=model_file(trained, suffix),
        target_columns=["price", "itemId"],
        output_probabilities=True,
    )
    assert sorted(p.relative_to(trained / output).as_posix() for p in (trained / output).rglob("*.csv")) == [
        "predictions/sequifier-default-best-predictions.csv",
        "probabilities/sequifier-default-best-itemId-probabilities.csv",
    ]
    assert len(next(iter(written.values()))) == 2
    predictions = pd.read_csv(trained / output / "predictions/sequifier-default-best-predictions.csv")
    assert list(predictions.columns) == ["sequenceId", "itemPosition", "price", "itemId"]
    items, prices = by_hand(trained)
    assert list(predictions.itemId) == items
    np.testing.assert_allclose(predictions.price, prices, rtol=1e-4)
    probabilities = pd.read_csv(
        trained / output / "probabilities/sequifier-default-best-itemId-probabilities.csv"
    )
    assert list(probabilities.columns) == ["sequenceId", "itemPosition", *sorted(EXAMPLE_STATES)]
    assert len(probabilities) == len(predictions) == 454
    classes = probabilities[sorted(EXAMPLE_STATES)]
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, atol=1e-6)
    assert list(classes.idxmax(axis=1)) == items


def test_pt_and_onnx_give_the_same_predictions_and_embeddings(trained):
    infer(trained, "out-a", model_path=model_file(trained, "pt"))
    infer(trained, "out-b", model_path=model_file(trained, "onnx"))
    for name in (
        "predictions/sequifier-default-best-predictions",
        "probabilities/sequifier-default-best-itemId-probabilities",
    ):
        pt, onnx = (pd.read_csv(trained / f"out-{x}/{name}.csv") for x in "ab")
        assert list(pt.columns) == list(onnx.columns) and len(pt) == 454
        if "itemId" in pt:
            assert (pt.itemId == onnx.itemId).all()
        numbers = pt.select_dtypes("number").columns
        np.testing.assert_allclose(pt[numbers], onnx[numbers], atol=1e-4)
    for x, suffix in zip("ab", ("pt", "onnx")):
        infer(
            trained,
            f"out-{x}",
            model_type="embedding",
            model_path=model_file(trained, suffix, embedding=True),
        )
    pt, onnx = (
        pd.read_csv(trained / f"out-{x}/embeddings/sequifier-default-best-embeddings.csv") for x in "ab"
    )
    np.testing.assert_allclose(pt, onnx, atol=1e-4)


def test_embeddings_have_dim_model_columns_and_are_the_last_hidden_state(trained):
    infer(trained, "out-emb", model_type="embedding")
    embeddings = pd.read_csv(trained / "out-emb/embeddings/sequifier-default-best-embeddings.csv")
    dims = [str(i) for i in range(32)]  # dim_model of the make template
    assert list(embeddings.columns) == ["sequenceId", "subsequenceId", "itemPosition", *dims]
    windows = split_windows(trained)
    first_rows = windows[windows.inputCol == "itemId"]
    assert (embeddings.subsequenceId.to_numpy() == first_rows.subsequenceId.to_numpy()).all()
    assert (embeddings.itemPosition.to_numpy() == first_rows.startItemPosition.to_numpy() + W).all()
    np.testing.assert_allclose(embeddings[dims].to_numpy(), by_hand(trained, embedding=True), atol=1e-5)


def generate_by_hand(project, first_window: dict, steps: int) -> list:
    """Argmax generation, every predicted item appended to the context (ids, normalized prices)."""
    model, bundle = load_bundle(project / model_file(project))
    ids = torch.tensor(first_window["itemId"][None, :-1], dtype=torch.int32)
    prices = torch.tensor(first_window["price"][None, :-1]).float()
    stats = bundle["metadata"]["selected_columns_statistics"]["price"]
    by_id = {v: k for k, v in bundle["metadata"]["id_maps"]["itemId"].items()}
    rows = []
    with torch.no_grad():
        for _ in range(steps):
            logits, price = GenerativeHead(model)(ids, prices)
            item = int(logits[0, 3:].argmax()) + 3
            rows.append((by_id[item], float(price[0]) * stats["std"] + stats["mean"]))
            ids = torch.cat([ids[:, 1:], torch.tensor([[item]], dtype=torch.int32)], 1)
            prices = torch.cat([prices[:, 1:], price[:, None]], 1)
    return rows


def test_autoregression_generates_the_asked_steps_per_sequence(trained):
    infer(trained, "out-ar", autoregression=True, autoregression_total_steps=6, output_probabilities=False)
    generated = pd.read_csv(trained / "out-ar/predictions/sequifier-default-best-predictions.csv")
    windows = split_windows(trained)
    firsts = windows[(windows.inputCol == "itemId") & (windows.subsequenceId == 0)]
    assert len(generated) == 6 * len(firsts)
    for sequence, rows in generated.groupby("sequenceId", sort=False):
        assert len(rows) == 6
        start = int(firsts[firsts.sequenceId == sequence].startItemPosition.iloc[0]) + W
        assert list(rows.itemPosition) == list(range(start, start + 6))
    sequence = int(firsts.sequenceId.iloc[3])
    first = window_arrays(
        windows[(windows.sequenceId == sequence) & (windows.subsequenceId == 0)], ["itemId", "price"], {}
    )
    expected = generate_by_hand(trained, {c: a[0] for c, a in first.items()}, 6)
    rows = generated[generated.sequenceId == sequence]
    assert list(rows.itemId) == [item for item, _ in expected]
    np.testing.assert_allclose(rows.price, [price for _, price in expected], rtol=1e-4)


def test_sampling_is_reproducible_with_a_seed(trained):
    sampled = {"sample_from_distribution_columns": ["itemId"], "output_probabilities": False}
    for output, seed in (("out-s1", 1), ("out-s1b", 1), ("out-s2", 2)):
        infer(trained, output, seed=seed, **sampled)
    read = lambda output: pd.read_csv(trained / output / "predictions/sequifier-default-best-predictions.csv")  # noqa: E731
    first, again, other = read("out-s1"), read("out-s1b"), read("out-s2")
    pd.testing.assert_frame_equal(first, again)
    assert (first.itemId != other.itemId).any()
    argmax, _ = by_hand(trained)
    assert (first.itemId != np.asarray(argmax)).any()  # draws, not the argmax
    np.testing.assert_allclose(first.price, other.price)  # real targets are not sampled


def check_seeded_dropout(project, model: str, rtol: float) -> None:
    """Monte-Carlo dropout with `model` (0.3 dropout): the same seed, the same outputs; another
    seed, others; without it, the plain model's."""
    name = Path(model).stem.rsplit("-", 1)[0]
    settings = {"model_path": model, "output_probabilities": False}
    for output, active, seed in ((f"{name}-1", True, 1), (f"{name}-1b", True, 1), (f"{name}-2", True, 2)):
        infer(project, output, infer_with_dropout=active, seed=seed, **settings)
    infer(project, f"{name}-0", infer_with_dropout=False, seed=1, **settings)
    read = lambda output: pd.read_csv(project / output / f"predictions/{name}-predictions.csv")  # noqa: E731
    pd.testing.assert_frame_equal(read(f"{name}-1"), read(f"{name}-1b"))
    assert not np.allclose(read(f"{name}-1").price, read(f"{name}-2").price)
    _, prices = by_hand(project)
    np.testing.assert_allclose(read(f"{name}-0").price, prices, rtol=rtol)


def test_monte_carlo_dropout_is_seeded(trained):
    bundle = torch.load(trained / model_file(trained), weights_only=True)  # tensors and plain data
    bundle["model_args"]["dropout"] = 0.3
    bundle["checksum"] = bundle_checksum(bundle)  # a description changed on purpose
    torch.save(bundle, trained / "models" / "sequifier-dropout-best-1.pt")
    check_seeded_dropout(trained, "models/sequifier-dropout-best-1.pt", rtol=1e-5)


def test_monte_carlo_dropout_of_an_onnx_export_is_seeded(trained):
    from sequifier.model.export import describe, write_onnx

    model, bundle = load_bundle(trained / model_file(trained))
    bundle["model_args"]["dropout"] = 0.3
    dropped = Transformer(ModelArgs.from_dict(bundle["model_args"]))
    dropped.load_state_dict(model.state_dict())
    description = describe(dropped, "generative", 1, bundle["config"], bundle["metadata"], True)
    write_onnx(trained / "models" / "sequifier-mc-best-1.onnx", dropped, description)
    check_seeded_dropout(trained, "models/sequifier-mc-best-1.onnx", rtol=1e-4)


def preprocess_again(project, name, table=None, **values) -> str:
    """The example (or `table`) preprocessed on its own, into data/{name}*; returns its metadata path."""
    from sequifier.preprocess import run as preprocess

    data = "data/example.csv"
    if table is not None:
        data = f"data/{name}.csv"
        table.to_csv(project / data, index=False)
    loaded = config.load("preprocess", project / "configs/preprocess.yaml")
    overrides = {"project_root": str(project), "data_path": data, "n_cores": 1}
    overrides |= {
        "output_path": f"data/{name}",
        "metadata_config_path": f"configs/metadata_configs/{name}.json",
    }
    preprocess(config.resolve("preprocess", {**loaded, **overrides, **values}, "test"))
    return f"configs/metadata_configs/{name}.json"


def test_a_folder_of_shards_gives_a_folder_of_outputs(trained):
    metadata = preprocess_again(trained, "sharded", merge_output=False, batches_per_file=100)
    shards = sorted((trained / "data/sharded/example-split2").iterdir())
    assert len(shards) == 5
    infer(trained, "out-shards", metadata_config_path=metadata)  # data: the test split of that metadata
    folder = trained / "out-shards/predictions/sequifier-default-best-predictions"
    assert sorted(p.name for p in folder.iterdir()) == [p.stem + ".csv" for p in shards]
    parts = [pd.read_csv(p) for p in sorted(folder.iterdir())]
    assert [len(p) for p in parts] == [100, 100, 100, 100, 54]
    infer(trained, "out-merged")
    merged = pd.read_csv(trained / "out-merged/predictions/sequifier-default-best-predictions.csv")
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), merged)


def test_data_preprocessed_on_its_own_is_translated_to_the_models_encoding(trained):
    """Other statistics (not normalized): the same windows give the same predictions."""
    metadata = preprocess_again(trained, "raw", normalize_real_columns=False)
    infer(trained, "out-raw", metadata_config_path=metadata)
    infer(trained, "out-merged")
    raw, merged = (
        pd.read_csv(trained / f"{o}/predictions/sequifier-default-best-predictions.csv")
        for o in ("out-raw", "out-merged")
    )
    assert (raw.itemId == merged.itemId).all()
    np.testing.assert_allclose(raw.price, merged.price, rtol=1e-4)


def test_unseen_values_become_other_with_a_warning_that_counts_them(trained, caplog):
    table = pd.read_csv(trained / "data/example.csv")
    table["itemId"] = table.itemId.replace({"peak": "apex", "drop": "dip"})  # other ids for every value
    metadata = preprocess_again(trained, "renamed", table=table)
    with caplog.at_level(logging.WARNING, logger="sequifier"):
        infer(trained, "out-new", metadata_config_path=metadata)
    assert "column 'itemId': 2 values of" in caplog.text and "'other'" in caplog.text
    predictions = pd.read_csv(trained / "out-new/predictions/sequifier-default-best-predictions.csv")
    ids = pd.read_json(trained / "configs/metadata_configs/example.json", typ="series")["id_maps"]["itemId"]
    other = lambda items: np.where(np.isin(items, [ids["peak"], ids["drop"]]), 1, items)  # noqa: E731
    items, prices = by_hand(trained, ids=other)
    assert list(predictions.itemId) == items
    np.testing.assert_allclose(predictions.price, prices, rtol=1e-4)


def test_values_fitted_out_of_new_data_are_named_in_a_warning(trained, caplog):
    """New data whose own training split lacks a value the model knows reads it as other; the warning
    says so and how to keep it (fit_on_all_splits)."""
    table = pd.read_csv(trained / "data/example.csv")
    early = table.groupby("sequenceId").itemPosition.transform(lambda p: p < p.quantile(0.9))
    table.loc[early & (table.itemId == "peak"), "itemId"] = "drop"  # peak only late in each sequence
    for name, fit_on_all_splits in (("late", False), ("late-all", True)):
        metadata = preprocess_again(trained, name, table=table, fit_on_all_splits=fit_on_all_splits)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sequifier"):
            infer(trained, f"out-{name}", metadata_config_path=metadata)
        warned = "were read as 'other' (id 1) when it was preprocessed" in caplog.text
        assert warned == (not fit_on_all_splits) and ("fit_on_all_splits: true" in caplog.text) == warned


def test_the_configs_of_make_run_unedited_after_train(trained):
    result = run_cli("infer", cwd=trained, check=True)
    assert "sequifier-default-best-predictions.csv" in result.stderr
    written = sorted(
        p.relative_to(trained / "outputs").as_posix() for p in (trained / "outputs").rglob("*.csv")
    )
    assert written == [
        "predictions/sequifier-default-best-predictions.csv",
        "probabilities/sequifier-default-best-itemId-probabilities.csv",
    ]


@pytest.mark.parametrize("write_format", ["csv", "pt"])
def test_windows_of_every_format_give_the_same_predictions(trained, write_format):
    metadata = preprocess_again(trained, f"as-{write_format}", write_format=write_format)
    infer(trained, f"out-{write_format}", metadata_config_path=metadata)
    infer(trained, "out-parquet")
    merged = pd.read_csv(trained / "out-parquet/predictions/sequifier-default-best-predictions.csv")
    found = trained / f"out-{write_format}/predictions/sequifier-default-best-predictions"
    if write_format == "pt":  # pt windows are a folder of shards: so are the outputs
        predictions = pd.concat([pd.read_csv(p) for p in sorted(found.iterdir())], ignore_index=True)
    else:
        predictions = pd.read_csv(found.with_suffix(".csv"))
    pd.testing.assert_frame_equal(predictions, merged, check_exact=False, rtol=1e-6)


def test_map_to_id_false_writes_the_ids(trained):
    infer(trained, "out-ids", map_to_id=False)
    predictions = pd.read_csv(trained / "out-ids/predictions/sequifier-default-best-predictions.csv")
    probabilities = pd.read_csv(
        trained / "out-ids/probabilities/sequifier-default-best-itemId-probabilities.csv"
    )
    ids = {
        value: i
        for value, i in load_bundle(trained / model_file(trained))[1]["metadata"]["id_maps"]["itemId"].items()
    }
    assert list(probabilities.columns[2:]) == [str(i) for i in sorted(ids.values())]
    items, _ = by_hand(trained)
    assert list(predictions.itemId) == [ids[item] for item in items]


def test_a_precomputed_id_map_with_gaps_has_a_class_per_value():
    from sequifier.data.metadata import Metadata
    from sequifier.infer.decode import OutputDecoder

    blank = {field.name: None for field in dataclasses.fields(Metadata)}
    metadata = Metadata(
        **blank
        | {
            "id_maps": {"item": {"a": 3, "b": 6}},
            "n_classes": {"item": 7},
            "column_dtypes": {"item": "string"},
        }
    )
    decoder = OutputDecoder(metadata, map_to_id=True)
    assert decoder.class_names("item") == ["a", "b"]
    logits = np.array([[9.0, 9.0, 9.0, 1.0, 9.0, 9.0, 2.0], [0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 1.0]])
    probabilities = decoder.probabilities("item", logits)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    index = probabilities.argmax(axis=1)
    assert list(decoder.ids("item", index)) == ["b", "a"] and list(decoder.class_ids("item", index)) == [6, 3]
    assert OutputDecoder(metadata, map_to_id=False).class_names("item") == ["3", "6"]
