"""Numbers that stop being numbers, through the real CLI: real columns whose statistics or encoded
values would overflow, training whose loss is not finite, model files damaged on disk, and models
whose outputs are not finite. Each is refused in one clear line (exit 2) and writes nothing; what
can be computed safely (values near the float64 limit) is."""

import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import made_project, run_cli
from test_bad_input import assert_rejected, make_project
from test_bad_input import run_cli as preprocess_cli
from test_infer import model_file

from sequifier.model.export import describe, load_bundle, write_bundle, write_onnx

# -- preprocessing ------------------------------------------------------------------------------


def table_csv(x) -> str:
    """Two sequences of 20 items; x the values of the real column (40 of them)."""
    n = len(x)
    table = pd.DataFrame(
        {
            "sequenceId": np.repeat([1, 2], n // 2),
            "itemPosition": np.tile(np.arange(n // 2), 2),
            "a": ["u", "v"] * (n // 2),
            "x": x,
        }
    )
    return table.to_csv(index=False)


ALTERNATING = np.where(np.arange(40) % 2, 1.797e308, -1.797e308)
MOSTLY_HIGH = np.where(np.arange(40) % 10 == 3, -1.7e308, 1.7e308)
ONE_HUGE = np.where(np.arange(40) == 23, 5e39, 1.0)

REFUSED = {
    "std overflows": (
        ALTERNATING,
        {},
        ["data/t.csv: real column 'x': its standard deviation over the training split is inf", "1.797e+308"],
    ),
    "standardized value overflows": (
        MOSTLY_HIGH,
        {},
        ["data/t.csv: real column 'x': value -1.7e+308 (sequenceId 1) is -inf after standardizing (mean"],
    ),
    "raw value beyond float32": (
        ONE_HUGE,
        {"normalize_real_columns": False},
        [
            "data/t.csv: real column 'x': value 5e+39 (sequenceId 2) is 5e+39",
            "beyond the float32 numbers",
            "set normalize_real_columns: true",
        ],
    ),
    "fitted on all splits, several parts": (
        ALTERNATING,
        {"fit_on_all_splits": True, "n_partitions": 2, "n_cores": 2},
        ["real column 'x': its standard deviation over every split is inf"],
    ),
    "value beyond float64": (
        [*["1.0"] * 30, "1e309", *["1.0"] * 9],
        {},
        ["data/t.csv line 32: real column 'x' is inf (sequenceId 2)", "must be finite"],
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_real_values_that_overflow_are_refused(tmp_path, case):
    x, config, expected = REFUSED[case]
    root = make_project(tmp_path, {"data/t.csv": table_csv(x)}, {"split_ratios": [0.8, 0.2], **config})
    assert_rejected(root, preprocess_cli(root), expected)


def test_values_near_the_float64_limit_get_finite_statistics_and_windows(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.5, 40) * 1e307  # their sum and their squares overflow float64
    root = make_project(tmp_path, {"data/t.csv": table_csv(x)}, {"split_ratios": [1.0]})
    result = preprocess_cli(root)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr  # no overflow in numpy either
    statistics = json.loads((root / "configs/metadata_configs/t.json").read_text())["training_statistics"]
    scaled = x / 1e307
    assert statistics["x"]["mean"] == pytest.approx(scaled.mean() * 1e307, rel=1e-12)
    assert statistics["x"]["std"] == pytest.approx(scaled.std(ddof=1) * 1e307, rel=1e-12)
    windows = pd.read_parquet(root / "data/t-split0.parquet")
    values = windows[windows.inputCol == "x"][["0", "1", "2"]].to_numpy()
    assert np.isfinite(values).all() and np.abs(values).max() < 3


# -- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("nonfinite"))


def train(project, name, *settings, args=()):
    quick = ["wandb.mode=disabled", "export_onnx=false", "export_embedding_model=false", *settings]
    sets = [item for setting in quick for item in ("--set", setting)]
    return run_cli("train", "--model-name", name, *args, *sets, cwd=project)


def assert_stopped(result, expected) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("sequifier train: error: configs/train.yaml: training stopped: "), line
    for text in expected:
        assert text in line, line


def finite_weights(state: dict) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


@pytest.mark.parametrize("limit", [0, 2])
def test_a_loss_that_is_not_finite_stops_training(made, limit):
    name = f"diverged{limit}"
    result = train(
        made, name, "training_spec.learning_rate=1.0e+30", f"training_spec.max_nonfinite_steps={limit}"
    )
    assert_stopped(
        result,
        [
            "the loss or its gradient is not finite in epoch 1, batch ",
            "(losses of this process: itemId nan, price nan, gradient norm nan)",
            f"{limit + 1} optimizer step(s) in a row (training_spec.max_nonfinite_steps: {limit})",
            "no checkpoint was written yet",
            "lower training_spec.learning_rate",
        ],
    )
    assert result.stderr.count("step skipped") == limit
    assert not list((made / "models").glob(f"sequifier-{name}-*"))
    assert not list((made / "checkpoints").glob(f"sequifier-{name}-*"))


def test_non_finite_steps_are_skipped_and_a_stop_leaves_the_last_checkpoint(made):
    """A price of 1e30 (not standardized) makes the loss of the batches that hold it overflow:
    their steps are skipped and the weights stay finite; resumed with none allowed, training stops
    in the next epoch and leaves the checkpoint of the epoch before, and the models, as they were."""
    table = pd.read_csv(made / "data/example.csv")
    longest = table.groupby("sequenceId").size().idxmax()  # its first items are far from validation
    table.loc[(table.sequenceId == longest) & (table.itemPosition == 1), "price"] = 1e30
    table.to_csv(made / "data/huge.csv", index=False)
    config = yaml.safe_load((made / "configs/preprocess.yaml").read_text())
    config.update(data_path="data/huge.csv", normalize_real_columns=False)
    (made / "configs/huge.yaml").write_text(yaml.safe_dump(config))
    run_cli("preprocess", "--config-path", "configs/huge.yaml", cwd=made, check=True)
    data = ("-mc", "configs/metadata_configs/huge.json")

    first = train(made, "huge", "training_spec.epochs=1", "training_spec.max_nonfinite_steps=20", args=data)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    assert "epoch 1 batch" in first.stderr and "step skipped (1 in a row" in first.stderr
    metrics = pd.read_csv(made / "logs/sequifier-huge-metrics.csv")
    trained = metrics[(metrics.kind == "epoch") & (metrics.epoch == 1)]
    assert np.isfinite(trained.train_loss).all() and np.isfinite(trained.validation_loss).all()
    (model,) = (made / "models").glob("sequifier-huge-best-1.pt")
    assert finite_weights(load_bundle(model)[0].state_dict())
    models = {path: path.read_bytes() for path in (made / "models").glob("sequifier-huge-*")}

    again = train(made, "huge", "training_spec.epochs=2", "training_spec.continue_training=true", args=data)
    saved = made / "checkpoints/sequifier-huge-epoch-1.pt"
    assert_stopped(
        again, ["not finite in epoch 2, batch ", f"the last checkpoint is {saved.relative_to(made)}"]
    )
    assert sorted(p.name for p in (made / "checkpoints").glob("sequifier-huge-*")) == [saved.name]
    assert finite_weights(torch.load(saved, weights_only=True)["model"])
    assert {path: path.read_bytes() for path in (made / "models").glob("sequifier-huge-*")} == models


# -- model files and their outputs ---------------------------------------------------------------


def flip_pt_weights(path: Path) -> None:
    """Invert 16 bytes in the middle of the largest tensor of a pt bundle (a zip of storages)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack(
        "<HH", data[entry.header_offset + 26 : entry.header_offset + 30]
    )
    middle = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def flip_onnx_weights(path: Path) -> None:
    """Invert 16 bytes in the middle of the largest initializer of an ONNX file."""
    import onnx

    weights = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(path.read_bytes())
    middle = data.find(weights) + len(weights) // 2
    assert middle > len(weights) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def infer(project, model: Path, output: Path):
    return run_cli("infer", "--model-path", model, "--output-path", output, cwd=project)


def assert_refused(result, output: Path, expected) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert not [path for path in output.rglob("*") if path.is_file()]


@pytest.mark.parametrize("suffix", ["pt", "onnx"])
def test_a_damaged_model_file_is_refused(trained_project, tmp_path, suffix):
    model = tmp_path / Path(model_file(trained_project, suffix)).name
    shutil.copyfile(trained_project / model_file(trained_project, suffix), model)
    (flip_pt_weights if suffix == "pt" else flip_onnx_weights)(model)
    assert_refused(
        infer(trained_project, model, tmp_path / "out"),
        tmp_path / "out",
        [f"{model}: the checksum of its weights and description does not match; the file is damaged"],
    )


def test_a_bundle_of_the_earlier_format_is_refused(trained_project, tmp_path):
    bundle = torch.load(trained_project / model_file(trained_project), weights_only=True)
    bundle["format"] = "sequifier-model/1"
    del bundle["checksum"]
    model = tmp_path / "sequifier-old-best-1.pt"
    torch.save(bundle, model)
    assert_refused(
        infer(trained_project, model, tmp_path / "out"),
        tmp_path / "out",
        [
            f"{model}: a model of format sequifier-model/1, written by an earlier version",
            "train the model again",
        ],
    )


@pytest.mark.parametrize("suffix", ["pt", "onnx"])
def test_outputs_that_are_not_finite_are_never_written(trained_project, tmp_path, suffix):
    model, bundle = load_bundle(trained_project / model_file(trained_project))
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))  # an intact file of weights not finite
    description = describe(model, "generative", 1, bundle["config"], bundle["metadata"], False)
    path = tmp_path / f"sequifier-nan-best-1.{suffix}"
    (write_bundle if suffix == "pt" else write_onnx)(path, model, description)
    first = pd.read_parquet(trained_project / "data/example-split2.parquet").sequenceId.iloc[0].item()
    assert_refused(
        infer(trained_project, path, tmp_path / "out"),
        tmp_path / "out",
        [
            f"{path}: the model's outputs (itemId, price) are not finite (NaN or inf) for ",
            f"windows (the first of sequenceId {first!r}); nothing is written for this model",
        ],
    )
