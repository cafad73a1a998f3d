"""Controlled sampling (temperature, top_k, top_p): many draws from one window follow the
tempered, truncated and renormalized class probabilities; temperature 0 and top_k 1 are the
argmax; pt and ONNX draw the same; bad settings are clear errors."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from test_infer import infer, model_file, split_windows

from sequifier.make import EXAMPLE_STATES

N = 6000  # draws of the one window
CLASSES = sorted(EXAMPLE_STATES)
PREDICTIONS = "predictions/sequifier-default-best-predictions.csv"


@pytest.fixture(scope="module")
def repeated(trained_project):
    """The test window with the flattest predicted distribution, written N times (as N sequences)."""
    project = trained_project
    infer(project, "out-flat")
    probabilities = pd.read_csv(
        project / "out-flat/probabilities/sequifier-default-best-itemId-probabilities.csv"
    )
    flattest = int(probabilities[CLASSES].max(axis=1).to_numpy().argmin())
    windows = split_windows(project)
    sequence, subsequence = (
        windows[windows.inputCol == "itemId"].iloc[flattest][["sequenceId", "subsequenceId"]].tolist()
    )
    window = windows[(windows.sequenceId == sequence) & (windows.subsequenceId == subsequence)]
    copies = pd.concat([window.assign(sequenceId=i) for i in range(N)], ignore_index=True)
    stored = pq.read_schema(project / "data" / "example-split2.parquet").metadata  # its fingerprint
    table = pa.Table.from_pandas(copies, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, **stored})
    pq.write_table(table, project / "data" / "repeated.parquet")
    return project, probabilities[CLASSES].to_numpy()[flattest]


def expected(p: np.ndarray, temperature=1.0, top_k=None, top_p=None) -> np.ndarray:
    """The distribution by hand: p^(1/T) renormalized, the k most likely, the nucleus reaching top_p."""
    q = p ** (1 / temperature)
    q = q / q.sum()
    order = sorted(range(len(q)), key=lambda i: -q[i])
    kept, mass = [], 0.0
    for rank, i in enumerate(order):
        if (top_k is not None and rank >= top_k) or (top_p is not None and mass >= top_p):
            break
        kept.append(i)
        mass += q[i]
    out = np.zeros_like(q)
    out[kept] = q[kept]
    return out / out.sum()


def draws(project, output, **settings) -> pd.DataFrame:
    infer(
        project,
        output,
        data_path="data/repeated.parquet",
        output_probabilities=False,
        sample_from_distribution_columns=["itemId"],
        **settings,
    )
    return pd.read_csv(project / output / PREDICTIONS)


SETTINGS = {
    "plain": {},
    "temperature 0.5": {"temperature": 0.5},
    "temperature 2": {"temperature": 2.0},
    "top_k 2": {"top_k": 2},
    "top_p 0.6": {"top_p": 0.6},
    "all three": {"temperature": 1.5, "top_k": 3, "top_p": 0.8},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_draws_follow_the_truncated_renormalized_probabilities(repeated, name):
    project, p = repeated
    settings = SETTINGS[name]
    found = draws(project, f"out-draws-{name.replace(' ', '-')}", **settings)
    counts = found.itemId.value_counts().reindex(CLASSES, fill_value=0).to_numpy()
    q = expected(p, **settings)
    assert (counts[q == 0] == 0).all(), (counts, q)  # cut classes are never drawn
    bound = 5 * np.sqrt(N * q * (1 - q)) + 1  # 5 binomial standard deviations of the count
    assert (np.abs(counts - N * q) <= bound).all(), (counts, N * q)
    kept = q > 0
    chi_square = (((counts - N * q) ** 2)[kept] / (N * q)[kept]).sum()
    df = max(int(kept.sum()) - 1, 1)
    assert chi_square < df + 5 * np.sqrt(2 * df), chi_square
    if name == "top_k 2":
        assert kept.sum() == 2
    if name == "top_p 0.6":
        assert 1 <= kept.sum() < len(CLASSES)


def test_temperature_0_and_top_k_1_are_the_argmax(trained_project):
    infer(trained_project, "out-argmax", output_probabilities=False)
    argmax = pd.read_csv(trained_project / "out-argmax" / PREDICTIONS)
    sampled = {"sample_from_distribution_columns": ["itemId"], "output_probabilities": False}
    for output, settings in (("out-t0", {"temperature": 0}), ("out-k1", {"top_k": 1, "temperature": 3.0})):
        infer(trained_project, output, **sampled, **settings)
        pd.testing.assert_frame_equal(pd.read_csv(trained_project / output / PREDICTIONS), argmax)
    infer(trained_project, "out-t1", **sampled, temperature=1.0, seed=3)  # a draw, not the argmax
    assert (pd.read_csv(trained_project / "out-t1" / PREDICTIONS).itemId != argmax.itemId).any()


def test_pt_and_onnx_draw_the_same(trained_project):
    settings = {"sample_from_distribution_columns": ["itemId"], "temperature": 1.7, "top_p": 0.9, "seed": 5}
    infer(trained_project, "out-draw-pt", **settings)
    infer(trained_project, "out-draw-onnx", model_path=model_file(trained_project, "onnx"), **settings)
    pt, onnx = (pd.read_csv(trained_project / f"out-draw-{x}" / PREDICTIONS) for x in ("pt", "onnx"))
    assert (pt.itemId == onnx.itemId).all()
    np.testing.assert_allclose(pt.price, onnx.price, rtol=1e-4)
    infer(trained_project, "out-draw-pt2", **settings)
    pd.testing.assert_frame_equal(pd.read_csv(trained_project / "out-draw-pt2" / PREDICTIONS), pt)


BAD = {
    "top_p above 1": (
        ["--set", "top_p=1.5", *["--set", "sample_from_distribution_columns=[itemId]"]],
        "top_p",
    ),
    "top_p 0": (["--set", "top_p=0", "--set", "sample_from_distribution_columns=[itemId]"], "top_p"),
    "top_k 0": (["--set", "top_k=0", "--set", "sample_from_distribution_columns=[itemId]"], "top_k"),
    "temperature below 0": (
        ["--set", "temperature=-0.5", "--set", "sample_from_distribution_columns=[itemId]"],
        "temperature",
    ),
    "temperature inf": (
        ["--set", "temperature=.inf", "--set", "sample_from_distribution_columns=[itemId]"],
        "temperature: inf, but it must be a finite number >= 0",
    ),
    "top_p nan": (
        ["--set", "top_p=.nan", "--set", "sample_from_distribution_columns=[itemId]"],
        "top_p: nan, but it must be a number in (0, 1]",
    ),
    "top_k without a sampled column": (
        ["--set", "top_k=3"],
        "top_k: 3, but sample_from_distribution_columns is empty",
    ),
    "temperature without a sampled column": (
        ["--set", "temperature=0.7"],
        "temperature: 0.7, but sample_from_distribution_columns is empty",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sampling_settings_are_clear_errors(trained_project, case, tmp_path):
    args, text = BAD[case]
    output = tmp_path / "outputs"
    result = run_cli("infer", "--set", f"output_path={output}", *args, cwd=trained_project)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and text in result.stderr, result.stderr
    assert not output.exists() or not [p for p in output.rglob("*") if p.is_file()]
