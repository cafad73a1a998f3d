"""criterion GaussianNLLLoss for a real target: the model predicts a mean and a variance; inference
writes the standard deviation beside the value on the data's scale, pt and ONNX alike, and
sampling draws from N(mean, std)."""

import numpy as np
import pandas as pd
import pytest
from conftest import Project, run_cli

from sequifier.model.network import ModelArgs

SIGMA, SLOPE, SHIFT = 1.5, 3.0, 10.0  # y of the next item = SLOPE * x + SHIFT + N(0, SIGMA)
PREDICTIONS = "predictions/sequifier-gauss-best-predictions.csv"


def noisy_table(n_sequences=90, length=60, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for sequence in range(n_sequences):
        x = rng.normal(0.0, 1.0, length)
        y = np.concatenate([[SHIFT], SLOPE * x[:-1] + SHIFT + rng.normal(0.0, SIGMA, length - 1)])
        frames.append(
            pd.DataFrame(
                {
                    "sequenceId": sequence,
                    "itemPosition": np.arange(length),
                    "x": x,
                    "y": y,
                    "y_std": rng.normal(0.0, 1.0, length),  # a column named like y's std column
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def gaussian_project(tmp_path_factory) -> Project:
    project = Project(tmp_path_factory.mktemp("gaussian") / "project")
    project.write_data(noisy_table())
    project.preprocess(write_format="parquet", seq_length=4)
    project.write_train_config(epochs=5, batch_size=32, learning_rate=0.01)
    settings = {
        "model_name": "gauss",
        "target_columns": "[y, y_std]",
        "training_spec.criterion": "{y: GaussianNLLLoss}",
        "export_onnx": "true",
        "export_embedding_model": "false",
        "model_spec.dim_model": "16",
        "model_spec.dim_feedforward": "32",
    }
    sets = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    run_cli("train", *sets, cwd=project.root, check=True)
    (project.root / "configs" / "infer.yaml").write_text(f"project_root: {project.root}\n")
    return project


def cli_infer(project: Project, output: str, model="pt", **settings):
    (model_path,) = (project.root / "models").glob(f"sequifier-gauss-best-[0-9]*.{model}")
    values = {"model_path": str(model_path.relative_to(project.root)), "output_path": output, **settings}
    sets = [item for key, value in values.items() for item in ("--set", f"{key}={value}")]
    return run_cli("infer", *sets, cwd=project.root)


def infer(project: Project, output: str, model="pt", **settings) -> pd.DataFrame:
    result = cli_infer(project, output, model, **settings)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return pd.read_csv(project.root / output / PREDICTIONS)


def truth(project: Project, predictions: pd.DataFrame) -> np.ndarray:
    """The noiseless y of each predicted item: SLOPE * (the item before's x) + SHIFT."""
    table = noisy_table().set_index(["sequenceId", "itemPosition"])
    before = list(zip(predictions.sequenceId, predictions.itemPosition - 1))
    return SLOPE * table.loc[before].x.to_numpy() + SHIFT


def test_the_predicted_std_is_the_noise_on_the_data_scale(gaussian_project):
    predictions = infer(gaussian_project, "out-pt")
    # y's std column cannot be the target y_std's: it gets a leading _
    assert list(predictions.columns) == ["sequenceId", "itemPosition", "y", "_y_std", "y_std"]
    assert len(predictions) > 200
    assert abs(np.median(predictions._y_std) - SIGMA) < 0.2 * SIGMA, predictions._y_std.describe()
    error = np.abs(predictions.y - truth(gaussian_project, predictions))  # the mean: on the data's scale
    assert error.mean() < 0.3 * SIGMA, error.describe()
    onnx = infer(gaussian_project, "out-onnx", model="onnx")
    np.testing.assert_allclose(onnx[["y", "_y_std"]], predictions[["y", "_y_std"]], rtol=1e-4, atol=1e-4)


def test_sampling_draws_from_the_predicted_normal(gaussian_project):
    mean = infer(gaussian_project, "out-mean")
    sampled = {"sample_from_distribution_columns": "[y]", "seed": 7}
    first = infer(gaussian_project, "out-draw-1", **sampled)
    again = infer(gaussian_project, "out-draw-1b", **sampled)
    pd.testing.assert_frame_equal(first, again)
    z = (first.y - mean.y) / mean._y_std  # standard normal, if drawn from N(mean, std)
    n = len(z)
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.std() - 1) < 5 / np.sqrt(2 * n), z.describe()
    np.testing.assert_allclose(first._y_std, mean._y_std)
    onnx = infer(gaussian_project, "out-draw-onnx", model="onnx", **sampled)
    np.testing.assert_allclose(onnx.y, first.y, rtol=1e-4, atol=1e-3)
    hot = infer(gaussian_project, "out-draw-hot", temperature=4.0, **sampled)
    assert abs(((hot.y - mean.y) / mean._y_std).std() - 2) < 10 / np.sqrt(2 * n)  # std * sqrt(4)
    cold = infer(gaussian_project, "out-draw-cold", temperature=0, **sampled)
    pd.testing.assert_frame_equal(cold, mean)


def test_bad_gaussian_settings_are_clear_errors(gaussian_project):
    result = cli_infer(gaussian_project, "out-bad", sample_from_distribution_columns="[y_std]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sample_from_distribution_columns: 'y_std' is not a categorical target written" in result.stderr
    assert "nor a real one with a predicted distribution (y)" in result.stderr
    result = cli_infer(gaussian_project, "out-bad", sample_from_distribution_columns="[y]", top_k=3)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "top_k: 3, but sample_from_distribution_columns (y) holds no categorical target" in result.stderr
    assert not list((gaussian_project.root / "out-bad").rglob("*.csv"))


def test_gaussian_loss_of_a_categorical_target_is_a_clear_error(project):
    table = noisy_table(n_sequences=10, length=10).assign(
        kind=lambda t: (t.x > 0).map({True: "a", False: "b"})
    )
    project.write_data(table)
    project.preprocess(write_format="parquet", seq_length=4)
    project.write_train_config(epochs=1)
    result = run_cli(
        "train",
        "--set",
        "training_spec.criterion={kind: GaussianNLLLoss}",
        cwd=project.root,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training_spec.criterion.kind: 'GaussianNLLLoss' for a categorical target" in result.stderr
    assert not (project.root / "models").exists() or not list((project.root / "models").iterdir())


def test_models_written_before_load_with_plain_real_heads():
    args = ModelArgs(input_columns=(("x", "real", 0, 8),), target_columns=(("x", "real", 0),), seq_length=4)
    older = args.to_dict()
    del older["gaussian_targets"]  # a bundle of an earlier version
    assert ModelArgs.from_dict(older) == args and args.gaussian_targets == ()
