"""itemPositions that are not 0, 1, 2, ...: every output carries the real itemPosition of the item
it is about, and generated items continue each sequence's own step (through the CLI).

The walkthrough's model (conftest) is applied to its own example table with the positions
replaced (gapped by 10, or uneven), preprocessed on its own: the model's outputs are the same as
on the example, and the itemPositions are the replaced ones of the same items.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

STEPS = 5  # generated items per sequence


def _outputs(project, name, *flags) -> dict:
    """Predictions and probabilities, embeddings, and generated items of the walkthrough's model."""
    found = {}
    for kind, extra in {
        "predictions": [],
        "embeddings": ["--set", "model_type=embedding"],
        "generated": ["--set", "autoregression=true", "--set", f"autoregression_total_steps={STEPS}"],
    }.items():
        output = f"out-{name}-{kind}"
        result = run_cli("infer", "--output-path", output, *flags, *extra, cwd=project)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        folder = project / output
        if kind == "embeddings":
            found[kind] = pd.read_csv(folder / "embeddings/sequifier-default-best-embeddings.csv")
        else:
            found[kind] = pd.read_csv(folder / "predictions/sequifier-default-best-predictions.csv")
        if kind == "predictions":
            found["probabilities"] = pd.read_csv(
                folder / "probabilities/sequifier-default-best-itemId-probabilities.csv"
            )
        found[f"{kind} log"] = result.stderr
    return found


@pytest.fixture(scope="module")
def example_outputs(trained_project):
    """The outputs on the example itself (itemPositions 0, 1, 2, ...: the index of each item)."""
    table = pd.read_csv(trained_project / "data/example.csv")
    assert (table.itemPosition == table.groupby("sequenceId").cumcount()).all()
    return _outputs(trained_project, "example")


def _renumbered(project, name: str, positions) -> tuple[pd.DataFrame, dict]:
    """The example with new itemPositions (`positions(sequence, length)`), preprocessed on its own
    into data/{name}; its outputs with the model's."""
    table = pd.read_csv(project / "data/example.csv")
    lengths = table.groupby("sequenceId").size()
    table["itemPosition"] = np.concatenate([positions(s, n) for s, n in lengths.items()])
    (project / f"data/{name}").mkdir()
    table.to_csv(project / f"data/{name}/{name}.csv", index=False)
    metadata = f"configs/metadata_configs/{name}.json"
    result = run_cli(
        "preprocess", "--data-path", f"data/{name}/{name}.csv", "--output-path", f"data/{name}",
        "-mc", metadata, "--n-cores", "1", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return table, _outputs(project, name, "--metadata-config-path", metadata) | {
        "preprocess log": result.stderr
    }


def _position_of(table: pd.DataFrame, sequences, index) -> np.ndarray:
    """The itemPosition of the item at `index` (0, 1, ...) of each sequence, from the input table."""
    by_sequence = {s: group.itemPosition.to_numpy() for s, group in table.groupby("sequenceId")}
    return np.array([by_sequence[s][i] for s, i in zip(sequences, index)])


def _uneven(sequence, length):
    """Gaps of 1, 2 or 7 in a seeded order; every third sequence keeps a step of 3 throughout."""
    if sequence % 3 == 0:
        return 100 + 3 * np.arange(length)
    gaps = np.random.default_rng(sequence).choice([1, 2, 7], size=length)
    return np.cumsum(gaps)


@pytest.mark.parametrize(
    "name, positions",
    [("gapped", lambda s, n: 10 * np.arange(n)), ("uneven", _uneven)],
)
def test_outputs_carry_the_itempositions_of_the_input_table(
    trained_project, example_outputs, name, positions
):
    table, found = _renumbered(trained_project, name, positions)
    base = example_outputs
    for kind in ["predictions", "probabilities", "embeddings"]:
        # the same items: the same values, at the itemPositions the input table gives them
        index = base[kind].itemPosition.to_numpy()  # on the example, an item's index in its sequence
        expected = _position_of(table, base[kind].sequenceId, index)
        assert found[kind].itemPosition.tolist() == expected.tolist(), kind
        values = [c for c in base[kind].columns if c not in ("sequenceId", "itemPosition")]
        pd.testing.assert_frame_equal(found[kind][values], base[kind][values], rtol=1e-4)

    # generated items: from the window's last item on, by the step between its last two items
    generated, reference = found["generated"], base["generated"]
    first = reference.itemPosition.to_numpy()[::STEPS]  # the index of each window's last item
    sequences = reference.sequenceId.to_numpy()[::STEPS]
    last = _position_of(table, sequences, first)
    step = last - _position_of(table, sequences, first - 1)
    expected = last[:, None] + step[:, None] * np.arange(STEPS)[None, :]
    assert generated.itemPosition.tolist() == expected.reshape(-1).tolist()
    pd.testing.assert_frame_equal(
        generated.drop(columns="itemPosition"), reference.drop(columns="itemPosition")
    )

    steps = table.groupby("sequenceId").itemPosition.apply(lambda p: np.diff(p.to_numpy()))
    irregular = sum(len(set(d.tolist())) > 1 for d in steps)
    if name == "gapped":
        assert irregular == 0 and (step == 10).all()
        assert "uneven steps" not in found["generated log"] + found["preprocess log"]
    else:
        assert irregular > 50
        assert f"{irregular} of 200 sequences have itemPositions with uneven steps" in found["preprocess log"]
        assert (
            f"{irregular} of the data's 200 sequences have itemPositions with uneven steps"
            in (found["generated log"])
        )
        regular = sequences % 3 == 0  # these keep their own step of 3
        assert (step[regular] == 3).all() and not (step[~regular] == 3).all()


def test_padding_counts_back_by_the_sequences_step(tmp_path):
    """A short sequence at 100, 110: the padding slots of its window count back by 10."""
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    table = pd.DataFrame(
        {"sequenceId": [1, 1, 2, 2, 2], "itemPosition": [100, 110, 0, 1, 5], "x": ["a", "b", "a", "b", "a"]}
    )
    table.to_csv(root / "data/t.csv", index=False)
    config = (
        "project_root: .\ndata_path: data/t.csv\nseq_length: 3\nsplit_ratios: [1.0]\nstride_by_split: [1]\n"
    )
    (root / "preprocess.yaml").write_text(config)
    result = run_cli("preprocess", "--config-path", "preprocess.yaml", cwd=root)
    assert result.returncode == 0, result.stderr
    windows = pd.read_parquet(root / "data/t-split0.parquet")
    firsts = windows.drop_duplicates(["sequenceId", "subsequenceId"]).sort_values(
        ["sequenceId", "subsequenceId"]
    )
    got = firsts[["sequenceId", "startItemPosition", "lastItemPosition", "positionStep"]].values.tolist()
    # one window a sequence: 100 and 110 after 2 padding slots (80, 90), 0, 1, 5 after one (-1)
    assert got == [[1, 80, 110, 10], [2, -1, 5, 4]]
