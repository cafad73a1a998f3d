#!/usr/bin/env python
"""Benchmark `sequifier preprocess`: ours against the original (PyPI sequifier 3.1.1.0), and bounded memory.

    python benchmarks/preprocess.py [--rows N] [--upstream BIN] [--repeats R] [--out DIR]
    python benchmarks/preprocess.py --memory [--sizes 2e6,8e6,32e6] [--cap-mb 750 --cap-rows 64e6]

Every run is a whole process (start-up included), timed by wall clock; peak memory is the
largest sum of RSS over the process and its children, polled every 20 ms. See README.md.
"""

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ITEMS_PER_SEQUENCE = 200
SPLITS = 3
FEATURES = ["state", "x", "y"]
PANDAS_BYTES_PER_ROW = 5 * 8  # 5 columns of 8 bytes
OURS = shutil.which("sequifier", path=str(Path(sys.executable).parent)) or "sequifier"
UPSTREAM_DEFAULT = Path("/root/venvs/upstream/bin/sequifier")
UPSTREAM_CONFIG = Path("/work/shared/upstream/mixed/preprocess.yaml")
OUR_CONFIG = """\
project_root: {root}
data_path: {data}
selected_columns: [state, x, y]
column_types: {{state: categorical, x: real, y: real}}
seq_length: 32
stride_by_split: [4, 4, 4]
split_method: between_sequence
split_ratios: [0.8, 0.1, 0.1]
write_format: parquet
n_cores: 1
"""


def make_table(out: Path, rows: int, fmt: str = "csv") -> Path:
    """The long table sequenceId, itemPosition, state (~50 categories), x, y; reused if present."""
    if rows <= 0 or rows % ITEMS_PER_SEQUENCE:
        raise SystemExit(f"rows must be a positive multiple of {ITEMS_PER_SEQUENCE}, got {rows}")
    path = out / f"mixed-{rows}.{fmt}"
    if path.is_file():
        return path
    n_seq, rng = rows // ITEMS_PER_SEQUENCE, np.random.default_rng(2024)
    # state follows a sticky random walk over 50 values; x and y are noisy functions of it
    steps = rng.integers(-2, 3, rows) * (rng.random(rows) < 0.3)
    state = (rng.integers(0, 50, n_seq).repeat(ITEMS_PER_SEQUENCE) + np.cumsum(steps)) % 50
    table = pa.table(
        {
            "sequenceId": np.arange(n_seq).repeat(ITEMS_PER_SEQUENCE),
            "itemPosition": np.tile(np.arange(ITEMS_PER_SEQUENCE), n_seq),
            "state": state,
            "x": (np.sin(state / 8.0) + rng.normal(0, 0.3, rows)).round(4),
            "y": (state / 50.0 + rng.normal(0, 0.1, rows)).round(4),
        }
    )
    tmp = path.with_suffix(".tmp")
    if fmt == "csv":
        pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none"))
    else:
        pq.write_table(table, tmp, row_group_size=1 << 20)
    tmp.rename(path)
    return path


def measure(cmd: list, log: Path, env: dict | None = None, cap_bytes: int | None = None) -> tuple:
    """Run cmd to completion; return (wall seconds, peak RSS bytes of the process tree)."""
    preexec = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))) if cap_bytes else None
    env = {**os.environ, **(env or {})}
    with open(log, "w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            rss = 0
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.Error:
                members = []
            for p in members:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            peak = max(peak, rss)
            time.sleep(0.02)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); log {log}:\n{tail}")
    return wall, peak


def clean_outputs(root: Path, name: str) -> list:
    """Delete a project's windows and metadata of `name`, so a run must write them afresh."""
    paths = [root / "data" / f"{name}-split{k}.parquet" for k in range(SPLITS)]
    for path in [*paths, root / "configs" / "metadata_configs" / f"{name}.json"]:
        path.unlink(missing_ok=True)
    return paths


def run_ours(out: Path, table: Path, cores: int, log: Path, parts=None, cap=None, env=None) -> tuple:
    """Our CLI on `table`; returns (wall s, peak RSS bytes, windows per split from the metadata)."""
    root = out / "ours"
    config = root / "configs" / "preprocess.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(OUR_CONFIG.format(root=root, data=table))
    outputs = clean_outputs(root, table.stem)
    cmd = [OURS, "preprocess", "--config-path", str(config), "--n-cores", str(cores)]
    wall, peak = measure(cmd + (["--n-partitions", str(parts)] if parts else []), log, env, cap)
    assert all(p.is_file() for p in outputs), f"missing outputs of ours: {outputs}"
    metadata = json.loads((root / "configs" / "metadata_configs" / f"{table.stem}.json").read_text())
    return wall, peak, list(metadata["n_windows"].values())


def run_upstream(out: Path, csv: Path, cores: int, log: Path, binary: Path) -> tuple:
    """The original on `csv` with the shared config adapted; windows counted from its parquet files."""
    root = out / "upstream"
    config = root / "configs" / "preprocess.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    overrides = {"project_root": root, "preprocessing_data_path": csv, "n_cores": cores}

    def adapt(line: str) -> str:
        key = line.split(":")[0]
        return f"{key}: {overrides[key]}" if key in overrides else line

    config.write_text("\n".join(map(adapt, UPSTREAM_CONFIG.read_text().splitlines())) + "\n")
    outputs = clean_outputs(root, csv.stem)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(out / ".inductor")}
    wall, peak = measure([str(binary), "preprocess", "--config-path", str(config)], log, env)
    assert all(p.is_file() for p in outputs), f"missing outputs of upstream: {outputs}"
    # its windows are stored as one row per feature column (inputCol)
    return wall, peak, [pq.ParquetFile(p).metadata.num_rows // len(FEATURES) for p in outputs]


def print_table(header: list, rows: list) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def compare(args, out: Path) -> None:
    upstream = Path(args.upstream) if args.upstream else UPSTREAM_DEFAULT
    if args.upstream and not upstream.exists():
        raise SystemExit(f"--upstream {upstream}: no such file")
    upstream = upstream if upstream.exists() else None
    csv = make_table(out, args.rows)
    tools = {"ours": run_ours} | ({"upstream": lambda *a: run_upstream(*a, upstream)} if upstream else {})
    size = csv.stat().st_size / 2**20
    print(f"table {csv} ({args.rows:,} rows, {size:.0f} MB); ours {OURS}, upstream {upstream}")
    results = {}  # (tool, cores) -> list of (wall, peak, windows)
    for rep in range(args.repeats):
        for cores in (1, 2):
            for tool, run in tools.items():  # alternate ours and the original
                wall, peak, windows = run(out, csv, cores, out / "logs" / f"{tool}-{cores}-{rep}.log")
                results.setdefault((tool, cores), []).append((wall, peak, windows))
                what = f"run {rep + 1}/{args.repeats} {tool:8s} cores {cores}"
                print(f"  {what}: {wall:6.2f} s, peak RSS {peak / 2**20:6.0f} MB, windows {windows}")
    rows = []
    for (tool, cores), runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        peak = statistics.median(r[1] for r in runs)
        windows = sum(runs[-1][2])
        up = results.get(("upstream", cores))
        speedup = f"{statistics.median(r[0] for r in up) / wall:.2f}x" if up else "-"
        cells = [f"{wall:.2f}", f"{args.rows / wall:,.0f}", f"{windows / wall:,.0f}", f"{peak / 2**20:.0f}"]
        rows.append([tool, cores, *cells, speedup])
    print("\nwindows per split (train, validation, test); the tools hash sequences to splits differently:")
    for (tool, cores), runs in results.items():
        w = runs[-1][2]
        print(f"  {tool:8s} cores {cores}: {w} total {sum(w):,}")
    print(f"\npreprocess {args.rows:,} rows, medians of {args.repeats} runs (whole processes):")
    print_table(
        ["tool", "cores", "wall s", "rows/s", "windows/s", "peak RSS MB", "speed-up vs upstream"], rows
    )


def memory(args, out: Path) -> None:
    """Fixed part size, growing input: peak RSS should stay flat; optionally under a hard RLIMIT_AS."""
    rows = []
    for n in [int(float(s)) for s in args.sizes.split(",")]:
        for fmt in args.formats.split(","):
            table = make_table(out, n, fmt)
            parts = math.ceil(n / args.rows_per_part)
            wall, peak, windows = run_ours(out, table, 1, out / "logs" / f"memory-{n}-{fmt}.log", parts)
            size, est = table.stat().st_size / 2**20, n * PANDAS_BYTES_PER_ROW / 2**20
            cells = [
                f"{size:.0f}",
                f"{est:.0f}",
                parts,
                f"{wall:.1f}",
                f"{sum(windows):,}",
                f"{peak / 2**20:.0f}",
            ]
            rows.append([f"{n:,}", fmt, *cells])
            clean_outputs(out / "ours", table.stem)
            table.unlink() if args.delete_tables else None
    print(f"\nours, n_cores 1, parts of ~{args.rows_per_part:,} rows (--n-partitions = rows / that):")
    header = ["rows", "input", "input MB", "pandas MB (est.)", "parts", "wall s", "windows", "peak RSS MB"]
    print_table(header, rows)
    if not args.cap_mb:
        return
    n, cap = int(float(args.cap_rows)), args.cap_mb << 20
    table = make_table(out, n, args.cap_format)
    # arrow's default allocator (jemalloc) reserves address space generously; malloc arenas too
    env = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}
    parts = math.ceil(n / args.rows_per_part)
    size, est = table.stat().st_size / 2**20, n * PANDAS_BYTES_PER_ROW / 2**20
    print(f"\nhard cap: RLIMIT_AS {args.cap_mb} MB (address space, not RSS) on {n:,} rows, {parts} parts:")
    print(f"  {args.cap_format} {size:.0f} MB; pandas est. {est:.0f} MB = {est / args.cap_mb:.1f}x the cap")
    try:
        wall, peak, windows = run_ours(out, table, 1, out / "logs" / "memory-cap.log", parts, cap, env)
        print(f"  succeeded: {wall:.1f} s, peak RSS {peak / 2**20:.0f} MB, {sum(windows):,} windows")
    except RuntimeError as error:
        print(f"  FAILED under the cap:\n{error}")
    clean_outputs(out / "ours", table.stem)
    table.unlink() if args.delete_tables else None


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    arg = parser.add_argument
    arg("--rows", type=int, default=2_000_000, help="rows of the comparison table")
    arg("--upstream", help=f"the original's binary (default {UPSTREAM_DEFAULT} if present)")
    arg("--repeats", type=int, default=3)
    arg("--out", default=str(HERE / "out"), help="tables, projects and logs (git-ignored)")
    arg("--memory", action="store_true", help="bounded-memory mode instead of the comparison")
    arg("--sizes", default="2e6,8e6,32e6", help="--memory: comma-separated row counts")
    arg("--formats", default="csv,parquet", help="--memory: input formats to run")
    arg("--rows-per-part", type=int, default=1_000_000, help="--memory: rows per part")
    arg("--cap-mb", type=int, default=750, help="--memory: RLIMIT_AS of the capped run; 0: none")
    arg("--cap-rows", default="64e6", help="--memory: rows of the capped run")
    arg("--cap-format", default="parquet", choices=["csv", "parquet"], help="--memory: capped input")
    arg("--delete-tables", action="store_true", help="--memory: delete each table after use")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    memory(args, out) if args.memory else compare(args, out)


if __name__ == "__main__":
    main()
