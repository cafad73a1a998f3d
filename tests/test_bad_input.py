"""Bad input to `sequifier preprocess`, run through the real CLI in a throw-away project.

Every rejection must exit with status 2, say in one readable message (no traceback) which file,
column or config key is wrong, the bad value or row where there is one and what was expected,
and leave nothing behind: no split files, no metadata, no work folder.
"""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

CONFIG = "configs/preprocess.yaml"
HEADER = "sequenceId,itemPosition,a,x"


def rows(sequences=(1, 2), n_items=10):
    """CSV rows: `n_items` items per sequence, a categorical column a and a real column x."""
    return [f"{s},{i},{'uv'[i % 2]},{i / 2}" for s in sequences for i in range(n_items)]


def csv(*lines, header=HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


GOOD = csv(*rows())  # rows on lines 2..21; a row appended to it is line 22
BAD_ROW = "data/t.csv line 22"


def parquet_table(x_values) -> pa.Table:
    n = len(x_values)
    return pa.table(
        {
            "sequenceId": pa.array([1] * n, pa.int64()),
            "itemPosition": pa.array(range(n), pa.int64()),
            "a": pa.array(["u", "v"] * (n // 2), pa.string()),
            "x": pa.array(x_values, pa.float64()),
        }
    )


def make_project(root: Path, files=None, config=None, raw_config=None) -> Path:
    """configs/preprocess.yaml (seq_length 2, one core, plus `config`) and the files given."""
    for name, content in ({"data/t.csv": GOOD} if files is None else files).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if raw_config is None:
        raw_config = yaml.safe_dump(
            {"data_path": "data/t.csv", "seq_length": 2, "n_cores": 1, **(config or {})}
        )
    (root / "configs").mkdir(exist_ok=True)
    (root / CONFIG).write_text(raw_config)
    return root


def run_cli(root: Path, *args, config_path=CONFIG) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sequifier", "preprocess", "--config-path", config_path, *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)


def outputs(root: Path) -> list:
    """Everything preprocess may write: split files or folders, metadata, work folders."""
    data = root / "data"
    found = [*data.glob("*-split*"), *data.glob(".*-work")] if data.is_dir() else []
    return found + [p for p in [root / "configs" / "metadata_configs"] if p.exists()]


def assert_rejected(root: Path, result: subprocess.CompletedProcess, expected) -> None:
    stderr = result.stderr
    assert result.returncode == 2, f"exit code {result.returncode}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    for piece in expected:
        assert piece in stderr, f"{piece!r} not in stderr:\n{stderr}"
    assert outputs(root) == [], f"output written: {outputs(root)}"


def case(id, expected, files=None, config=None, raw_config=None, args=(), config_path=CONFIG):
    return pytest.param(files, config, raw_config, list(args), config_path, expected, id=id)


FOLDER = {"data_path": "data/d"}
PRECOMPUTED = {"use_precomputed_maps": ["a"]}

CASES = [
    # --- the table's columns
    case(
        "missing-sequenceId",
        [
            "data/t.csv",
            "missing column 'sequenceId'",
            "needs sequenceId, itemPosition",
            "found: seq, itemPosition, a, x",
        ],
        files={"data/t.csv": csv(*rows(), header="seq,itemPosition,a,x")},
    ),
    case(
        "missing-itemPosition",
        ["data/t.csv", "missing column 'itemPosition'", "needs sequenceId, itemPosition"],
        files={"data/t.csv": csv(*rows(), header="sequenceId,pos,a,x")},
    ),
    case(
        "no-feature-column",
        ["data/t.csv", "no feature column besides sequenceId and itemPosition"],
        files={"data/t.csv": csv("1,0", "1,1", "1,2", header="sequenceId,itemPosition")},
    ),
    case(
        "selected-column-absent-config",
        ["data/t.csv", "selected_columns", "'nope'", "feature columns: a, x"],
        config={"selected_columns": ["a", "nope"]},
    ),
    case(
        "selected-column-absent-flag",
        ["data/t.csv", "selected_columns", "'nope'", "feature columns: a, x"],
        args=["-sc", "a", "nope"],
    ),
    # --- the table's rows
    case(
        "duplicate-position",
        [
            "duplicate (sequenceId, itemPosition) = (2, 3)",
            "data/t.csv line 15",
            BAD_ROW,
            "needs its own position",
        ],
        files={"data/t.csv": csv(*rows(), "2,3,u,0.5")},
    ),
    case(
        "duplicate-position-across-files",
        ["(1, 4)", "data/d/f1.csv line 6", "data/d/f2.csv line 2", "own position"],
        files={"data/d/f1.csv": GOOD, "data/d/f2.csv": csv("1,4,u,0.5")},
        config=FOLDER,
    ),
    case(
        "position-not-integer",
        [BAD_ROW, "itemPosition is 10.5;", "positions must be integers"],
        files={"data/t.csv": csv(*rows(), "2,10.5,u,0.5")},
    ),
    case(
        "position-not-numeric",
        [BAD_ROW, "itemPosition", "'abc'", "integers"],
        files={"data/t.csv": csv(*rows(), "2,abc,u,0.5")},
    ),
    case(
        "nan-real-csv",
        [BAD_ROW, "column 'x'", "is missing", "NaN"],
        files={"data/t.csv": csv(*rows(), "2,10,u,NaN")},
    ),
    # missing cells: the same in every column type (unquoted null spellings in CSV, nulls in Parquet)
    *[
        case(
            f"missing-text-{spelling or 'empty'}",
            [BAD_ROW, "column 'a' is missing", "null spelling", 'kept when quoted ("NA")'],
            files={"data/t.csv": csv(*rows(), f"2,10,{spelling},0.5")},
        )
        for spelling in ("", "NA", "null", "N/A")
    ],
    case(
        "missing-sequenceId-text",
        ["data/t.csv line 3", "column 'sequenceId' is missing"],
        files={"data/t.csv": csv("a,0,u,1", "NA,1,u,1", "a,2,v,1")},
    ),
    case(
        "missing-text-parquet",
        ["data/t.parquet row 2", "column 'a' is missing (null"],
        files={"data/t.parquet": pa.table({"sequenceId": [1, 1], "itemPosition": [0, 1], "a": ["u", None]})},
        config={"data_path": "data/t.parquet"},
    ),
    case(
        "quoted-empty-in-a-number-column",
        ["data/t.csv", "invalid value ''", "(column 'x')", 'a quoted "" or "NA" is text, not a number'],
        files={"data/t.csv": csv(*rows(), '2,10,u,""')},
    ),
    case(
        "nan-real-parquet",
        ["data/t.parquet row 3", "real column 'x' is nan", "(sequenceId 1)", "must be finite"],
        files={"data/t.parquet": parquet_table([0.0, 1.0, float("nan"), 2.0])},
        config={"data_path": "data/t.parquet"},
    ),
    case(
        "inf-real",
        [BAD_ROW, "real column 'x' is inf", "(sequenceId 2)", "must be finite"],
        files={"data/t.csv": csv(*rows(), "2,10,u,inf")},
    ),
    case("empty-csv", ["data/t.csv", "no rows"], files={"data/t.csv": csv()}),
    case(
        "empty-parquet",
        ["data/t.parquet", "no rows"],
        files={"data/t.parquet": parquet_table([])},
        config={"data_path": "data/t.parquet"},
    ),
    # --- unreadable input
    case(
        "garbage-parquet",
        ["data/t.parquet", "cannot be read as parquet"],
        files={"data/t.parquet": b"PAR1\x00\x13garbage\xff\xfe"},
        config={"data_path": "data/t.parquet"},
    ),
    case(
        "garbage-csv",
        ["data/t.csv", "cannot be read as csv"],
        files={"data/t.csv": b"\x00\x01\x02garbage\xff"},
    ),
    case(
        "ragged-csv",
        ["data/t.csv", "cannot be read as csv", "Expected 4 columns, got 5", "2,10,u,0.5,9"],
        files={"data/t.csv": csv(*rows(), "2,10,u,0.5,9")},
    ),
    case(
        "parquet-read-as-csv",
        ["data/t.parquet", "is a Parquet file, but is read as csv", "set read_format to parquet"],
        files={"data/t.parquet": parquet_table([0.0, 1.0])},
        config={"data_path": "data/t.parquet", "read_format": "csv"},
    ),
    case(
        "csv-read-as-parquet",
        ["data/t.csv", "is not a Parquet file", "set read_format to csv"],
        config={"read_format": "parquet"},
    ),
    case(
        "latin-1-values",
        ["column 'a' of data/t.csv is not UTF-8 text", "latin-1", "save the file as UTF-8"],
        files={"data/t.csv": GOOD.encode() + "2,10,caf\xe9,0.5\n".encode("latin-1")},
    ),
    case(
        "latin-1-header",
        ["data/t.csv is not UTF-8 text", "save the file as UTF-8"],
        files={"data/t.csv": "sequenceId,itemPosition,caf\xe9\n1,0,u\n1,1,v\n".encode("latin-1")},
    ),
    case(
        "late-text-sequenceId",
        ["data/d/f2.csv", "invalid value 's7'", "every sequenceId must be of that type", "all as text"],
        files={"data/d/f1.csv": GOOD, "data/d/f2.csv": csv("s7,0,u,0.5", "s7,1,v,0.5")},
        config=FOLDER,
    ),
    case(
        "data-path-missing",
        ["data/nope.csv", "no such file or folder", "data_path"],
        config={"data_path": "data/nope.csv"},
    ),
    # --- config values checked against the data
    case(
        "split-ratios-sum",
        [CONFIG, "split_ratios", "[0.5, 0.2]", "0.7", "must sum to 1"],
        config={"split_ratios": [0.5, 0.2]},
    ),
    case(
        "stride-count",
        [CONFIG, "stride_by_split", "has 2 values", "one per split (3"],
        config={"stride_by_split": [1, 1]},
    ),
    case(
        "exact-stride",
        [
            CONFIG,
            "subsequence_start_mode 'exact'",
            "span of 5 items",
            "stride_by_split[0] = 3",
            "does not divide",
        ],
        config={"subsequence_start_mode": "exact", "stride_by_split": [3, 1, 1]},
    ),
    case(
        "precomputed-id-below-3",
        ["configs/id_maps/a.json", "value 'u' has id 2", "from 3 up"],
        files={"data/t.csv": GOOD, "configs/id_maps/a.json": '{"u": 2, "v": 3}'},
        config=PRECOMPUTED,
    ),
    case(
        "precomputed-map-missing",
        ["configs/id_maps/a.json", "column 'a'", "not found", "use_precomputed_maps"],
        config=PRECOMPUTED,
    ),
    # --- the config file itself
    case(
        "unknown-key",
        [CONFIG, "seq_lenght: unknown key", "did you mean 'seq_length'?"],
        config={"seq_lenght": 2},
    ),
    case("wrong-type", [CONFIG, "seq_length", "'abc'", "integer"], config={"seq_length": "abc"}),
    case("invalid-enum", [CONFIG, "write_format", "'xml'", "'parquet'"], config={"write_format": "xml"}),
    case(
        "invalid-yaml",
        [CONFIG, "not valid YAML", "line 2"],
        raw_config="data_path: data/t.csv\n- seq_length\n",
    ),
    case(
        "duplicate-key",
        [CONFIG, "key 'seq_length' is given twice, on line 2 and on line 4"],
        raw_config="data_path: data/t.csv\nseq_length: 2\nn_cores: 1\nseq_length: 3\n",
    ),
    case(
        "duplicate-nested-key",
        [CONFIG, "key 'column_types.a' is given twice, on line 3 and on line 4"],
        raw_config="data_path: data/t.csv\ncolumn_types:\n  a: categorical\n  a: real\n",
    ),
    case("config-missing", ["configs/nope.yaml", "config file not found"], config_path="configs/nope.yaml"),
    # --- found by a second read: positions out of range, names twice, paths that collide
    case(
        "position-text-not-an-integer",
        ["data/t.parquet row 2", "itemPosition is '1e3'", "positions must be integers"],
        files={
            "data/t.parquet": pa.table({"sequenceId": [1, 1], "itemPosition": ["0", "1e3"], "a": ["u", "v"]})
        },
        config={"data_path": "data/t.parquet"},
    ),
    case(
        "position-float-beyond-int64",
        [BAD_ROW, "itemPosition is 1e+20", "53 bits"],
        files={"data/t.csv": csv(*rows(), "2,99999999999999999999,u,0.5")},
    ),
    case(
        "position-uint64-beyond-int64",
        ["data/t.parquet", "itemPosition does not fit in 64-bit integers"],
        files={
            "data/t.parquet": pa.table(
                {
                    "sequenceId": pa.array([1, 1], pa.int64()),
                    "itemPosition": pa.array([1, 2**63 + 5], pa.uint64()),
                    "a": ["u", "v"],
                }
            )
        },
        config={"data_path": "data/t.parquet"},
    ),
    case(
        "duplicate-header",
        ["data/t.csv", "names column(s) ['a'] more than once"],
        files={"data/t.csv": csv("1,0,u,v", "1,1,u,v", header="sequenceId,itemPosition,a,a")},
    ),
    case(
        "duplicate-selected-columns",
        [CONFIG, "selected_columns", "has non-unique elements"],
        config={"selected_columns": ["a", "a"]},
    ),
    case(
        "max-rows-with-process-by-file",
        [CONFIG, "max_rows (5) cannot be combined with process_by_file"],
        files={"data/d/f1.csv": GOOD},
        config={**FOLDER, "process_by_file": True, "max_rows": 5},
    ),
    case(
        "output-inside-input-folder",
        [CONFIG, "output_path data/d lies in the input folder data/d"],
        files={"data/d/f1.csv": GOOD},
        config={**FOLDER, "output_path": "data/d"},
    ),
    case(
        "precomputed-keys-that-are-one-value",
        ["configs/id_maps/n.json", "keys '0100' and another key are the same value 100"],
        files={
            "data/t.csv": csv("1,0,100", "1,1,101", "1,2,100", header="sequenceId,itemPosition,n"),
            "configs/id_maps/n.json": '{"100": 3, "0100": 4}',
        },
        config={"use_precomputed_maps": ["n"]},
    ),
]


@pytest.mark.parametrize("files, config, raw_config, args, config_path, expected", CASES)
def test_bad_input_is_rejected(tmp_path, files, config, raw_config, args, config_path, expected):
    root = make_project(tmp_path, files, config, raw_config)
    assert_rejected(root, run_cli(root, *args, config_path=config_path), expected)


def test_sequence_split_across_files_with_process_by_file(tmp_path):
    files = {
        "data/d/f1.csv": csv(*rows(sequences=(1, 2), n_items=5)),
        "data/d/f2.csv": csv(*rows(sequences=(3,)), *[f"1,{i},u,0.5" for i in range(5, 10)]),
    }
    root = make_project(tmp_path, files, {**FOLDER, "process_by_file": True})
    expected = ["sequence 1 ", "data/d/f1.csv", "data/d/f2.csv", "process_by_file"]
    assert_rejected(root, run_cli(root), expected)


def test_error_in_one_worker_leaves_no_work_folder(tmp_path):
    """Two cores: part 0 (sequence 1) fails at once on a duplicate while part 1 (long) is scanned."""
    n = 100_000
    table = pa.table(
        {
            "sequenceId": [1] * 11 + [2] * n,
            "itemPosition": [*range(10), 3, *range(n)],
            "a": ["u"] * (n + 11),
            "x": np.arange(n + 11) / 7,
        }
    )
    for attempt in range(4):  # a race, lost about 5 times in 6 before the fix
        root = make_project(
            tmp_path / str(attempt),
            {"data/t.parquet": table},
            {"data_path": "data/t.parquet", "n_cores": 2, "n_partitions": 2},
        )
        assert_rejected(root, run_cli(root), ["(1, 3)", "data/t.parquet row 4", "data/t.parquet row 11"])


def _preprocess(root: Path, lines: list) -> dict:
    """Run preprocess on a CSV of `lines`; the bytes of every file it wrote, by relative path."""
    make_project(root, {"data/t.csv": csv(*lines)}, {"seq_length": 3, "n_partitions": 2})
    result = run_cli(root)
    assert result.returncode == 0, result.stderr
    written = [*(root / "data").glob("t-split*"), *(root / "configs" / "metadata_configs").glob("*")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(written)}


def test_unsorted_input_gives_the_same_output(tmp_path):
    rng = random.Random(7)
    lines = [
        f"s{s},{i},{rng.choice('uvw')},{rng.uniform(-5, 5):.4f}"
        for s in range(1, 7)
        for i in range(8 + 2 * s)
    ]
    shuffled = lines.copy()
    rng.shuffle(shuffled)
    assert shuffled != lines
    in_order, unsorted = _preprocess(tmp_path / "sorted", lines), _preprocess(tmp_path / "shuffled", shuffled)
    assert sorted(in_order) == sorted(unsorted)
    assert {"data/t-split0.parquet", "data/t-split1.parquet", "data/t-split2.parquet"} <= set(in_order)
    for name in in_order:
        if name.endswith(".json"):  # the metadata records a hash of the input bytes, which differ
            old, new = yaml.safe_load(in_order[name]), yaml.safe_load(unsorted[name])
            assert old.pop("input_hash") != new.pop("input_hash")
            assert old == new
        else:
            assert in_order[name] == unsorted[name], f"{name} differs"


def test_split_without_windows_still_gets_a_file(tmp_path):
    # 5 items per sequence: split2 (the last 10%) rounds to no items, hence no windows
    root = make_project(tmp_path, {"data/t.csv": csv(*rows(n_items=5))})
    result = run_cli(root)
    assert result.returncode == 0, result.stderr
    assert (root / "data" / "t-split2.parquet").is_file()
