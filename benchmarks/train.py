#!/usr/bin/env python
"""Benchmark `sequifier train`: speed against the original (PyPI sequifier 3.1.1.0), FLOP rate,
quality against a known entropy rate, and memory when streaming.

    python benchmarks/train.py [--parts speed,flops,quality,memory] [--repeats 3] [--out DIR]
    python benchmarks/train.py --parts speed --repeats 1 --epochs 3       # shorter
    python benchmarks/train.py --parts memory --memory-sizes 1,4,16 --memory-ram-sizes 1,4

Every training run is a whole process (start-up included) timed by the clock; the losses, rates
and times inside a run are read from the files each tool writes. Nothing here asserts a timing:
the script prints tables. See README.md ("train").
"""

import argparse
import json
import math
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import print_table  # noqa: E402  (the sibling benchmark's process runner)
from tools import (  # noqa: E402
    HERE,
    OURS,
    SEQ_LENGTH,
    SPEED_MODEL,
    SYMBOLS,
    UPSTREAM_DEFAULT,
    crossing,
    entropy_rate,
    fmt_s,
    markov_chain,
    our_preprocess,
    our_train_config,
    run_ours,
    run_upstream,
    sample_chain,
    speed_training,
    upstream_project,
    write_long,
)


def fast_overrides(args) -> dict:
    """What a user would change to get there sooner (printed with the results); same model."""
    return {
        "training_spec.batch_size": args.fast_batch_size,
        "training_spec.learning_rate": args.fast_lr,
        "training_spec.log_interval": args.log_interval,
    }


def speed(args, out: Path, peaks: list) -> dict:
    work = out / "train-speed"
    upstream = Path(args.upstream) if args.upstream else UPSTREAM_DEFAULT
    upstream = upstream if upstream.exists() else None
    chain = markov_chain(SYMBOLS, args.alpha, seed=11)
    data = write_long(work / "categorical.csv", {"itemId": sample_chain(chain, 2000, 200, seed=12)})
    print(f"\n== 1. speed: {data} (2,000 x 200, order-2 Markov over {SYMBOLS} symbols, alpha {args.alpha})")
    print(f"   entropy rate {entropy_rate(chain):.4f} nats; ours {OURS}; original {upstream}")
    ours_root = work / "ours"
    our_preprocess(ours_root, data, out / "logs" / "speed-ours-preprocess.log", n_cores=2)
    config = our_train_config(
        ours_root,
        data.stem,
        SPEED_MODEL,
        speed_training(args),
        input_columns=["itemId"],
        target_columns=["itemId"],
    )
    if upstream:
        upstream_project(work / "upstream", data, upstream, out / "logs" / "speed-upstream-preprocess.log")
        text = (work / "upstream" / "configs" / "train.yaml").read_text()
        text = re.sub(r"training_plan: \{epochs: \d+\}", f"training_plan: {{epochs: {args.epochs}}}", text)
        (work / "upstream" / "configs" / "train.yaml").write_text(text)
    variants = {"ours same settings": ("same", {})}
    variants["original"] = ("upstream", None) if upstream else None
    variants["ours fast settings"] = ("fast", fast_overrides(args))
    variants = {k: v for k, v in variants.items() if v}
    results = {name: [] for name in variants}
    for rep in range(args.repeats):
        for label, (name, overrides) in variants.items():  # alternate ours and the original
            log = out / "logs" / f"speed-{name}-{rep}.log"
            if overrides is None:
                r = run_upstream(work / "upstream", upstream, log)
            else:
                r = run_ours(ours_root, config, name, overrides, log)
            results[label].append(r)
            own = f" (its own timer {r['timed_s']:.1f} s)" if "timed_s" in r else ""
            print(
                f"  run {rep + 1}/{args.repeats} {label:19s}: wall {r['wall']:6.1f} s, "
                f"train loop {r['train_s']:6.1f} s{own}, {r['rate']:6.0f} windows/s, "
                f"final validation loss {r['final']:.4f}, "
                f"curve {' '.join(f'{t:.0f}s:{v:.3f}' for t, v in r['curve'])}"
            )
        peaks.append(matmul_peak(args.peak_seconds))
        print(f"  fp32 matmul peak after run {rep + 1}: {peaks[-1] / 1e9:.1f} GFLOP/s")
    med = {
        label: {k: statistics.median(r[k] for r in runs) for k in RUN_KEYS} for label, runs in results.items()
    }
    target = med["original"]["final"] if upstream else None
    rows = []
    for label, m in med.items():
        ttq = statistics.median(crossing(r["curve"], target) for r in results[label]) if target else math.nan
        base = med["original"]["wall"] if upstream else math.nan
        cells = [
            f"{m['wall']:.1f}",
            f"{m['startup']:.1f}",
            f"{m['train_s']:.1f}",
            f"{m['rate']:,.0f}",
            f"{m['after']:.1f}",
            f"{m['final']:.4f}",
            fmt_s(ttq),
            "-" if math.isinf(ttq) or math.isnan(ttq) else f"{ttq / base:.2f}",
            f"{base / m['wall']:.2f}x" if upstream else "-",
            f"{m['peak'] / 2**20:.0f}",
        ]
        rows.append([label, *cells])
    print(
        f"\ntrain {args.epochs} epochs, dim 64, 2 layers, 4 heads, SwiGLU ff 128, RMSNorm, CPU; medians of "
        f"{args.repeats} whole processes"
    )
    if target:
        print(f"time to quality: until a validation loss <= the original's final {target:.4f} (from launch)")
    print(f"ours fast settings: {json.dumps(fast_overrides(args))}")
    print_table(
        [
            "run",
            "wall s",
            "start-up s",
            "train loop s",
            "windows/s",
            "after training s",
            "final val loss",
            "time to quality s",
            "ttq / original wall",
            "speed-up (wall)",
            "peak RSS MB",
        ],
        rows,
    )
    exports = {label: [p.name for p in runs[-1]["models"]] for label, runs in results.items()}
    print(f"exports (after training): {exports}")
    return {"results": results, "medians": med, "work": work}


RUN_KEYS = ("wall", "peak", "startup", "train_s", "rate", "final", "after", "windows")


# -- 2. FLOP rate ----------------------------------------------------------------------------------


def matmul_peak(seconds: float, n: int = 1024) -> float:
    """fp32 FLOP/s of a plain loop of n x n torch.matmul with torch's default threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def matmul_params(bundle_path: Path) -> tuple:
    """(all parameters, parameters outside embeddings) of an exported model."""
    from sequifier.model.export import load_bundle

    model, bundle = load_bundle(bundle_path)
    total = sum(p.numel() for p in model.parameters())
    embedded = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    )
    return total, total - embedded, bundle["model_args"]


def flops(args, out: Path, speed_results: dict, peaks: list) -> None:
    print("\n== 2. FLOP rate (training, forward + backward)")
    runs = speed_results["results"]["ours same settings"]
    total, dense, margs = matmul_params(runs[-1]["models"][0])
    layers, dim, seq = margs["num_layers"], margs["dim_model"], margs["seq_length"]
    per_token = 6 * dense + 12 * layers * seq * dim
    peak = statistics.median(peaks)
    rows = []
    for label, rs in speed_results["results"].items():
        rate = statistics.median(r["rate"] for r in rs)
        achieved = rate * seq * per_token
        rows.append(
            [
                label,
                f"{rate:,.0f}",
                f"{rate * seq:,.0f}",
                f"{achieved / 1e9:.1f}",
                f"{100 * achieved / peak:.1f}",
            ]
        )
    print(
        f"parameters {total:,} ({dense:,} outside embeddings, N); FLOP per token "
        f"6N + 12 x layers x seq x dim = {per_token:,}; tokens = windows x {seq}"
    )
    print(
        f"fp32 peak: 1024x1024 torch.matmul loop, {torch.get_num_threads()} threads, median of {len(peaks)}: "
        f"{peak / 1e9:.1f} GFLOP/s (all: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})"
    )
    print("(the original's model has the same sizes; its FLOP per token is taken to be the same)")
    print_table(["run", "windows/s", "tokens/s", "GFLOP/s", "MFU %"], rows)


# -- 3. quality against the entropy rate ------------------------------------------------------------


def last_position_ce(bundle_path: Path, windows_path: Path, chain: np.ndarray, batch: int = 4096) -> dict:
    """Cross-entropy (nats) of the model at the last position of each test window, and of the true
    chain on the same targets."""
    from sequifier.model.export import load_bundle

    model, bundle = load_bundle(bundle_path)
    model.eval()
    table = pq.read_table(windows_path)
    names = [str(i) for i in range(SEQ_LENGTH, -1, -1)]
    values = np.stack([table.column(n).to_numpy() for n in names], axis=1).astype(np.int64)
    ids = bundle["metadata"]["id_maps"]["itemId"]
    decode = np.full(bundle["metadata"]["n_classes"]["itemId"], -1)
    for value, i in ids.items():
        decode[i] = int(value)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(values), batch):
            part = torch.from_numpy(values[start : start + batch])
            logits = model({"itemId": part[:, :-1].int()})["itemId"][:, -1]
            total += torch.nn.functional.cross_entropy(logits.float(), part[:, -1], reduction="sum").item()
            count += len(part)
    symbols = decode[values[:, -3:]]
    oracle = -np.log(chain[symbols[:, 0], symbols[:, 1], symbols[:, 2]]).mean()
    return {"ce": total / count, "oracle": float(oracle), "windows": count}


def quality(args, out: Path) -> None:
    work = out / "train-quality"
    chain = markov_chain(SYMBOLS, args.alpha, seed=21)
    n = args.quality_sequences
    data = write_long(work / f"markov-{n}.parquet", {"itemId": sample_chain(chain, n, 200, seed=22)})
    rate = entropy_rate(chain)
    print(
        f"\n== 3. quality: {data.name}, {n:,} x 200, order-2 Markov over {SYMBOLS} symbols, "
        f"alpha {args.alpha}"
    )
    root = work / "ours"
    strides = [args.quality_stride, args.quality_stride, 4]
    log = out / "logs" / "quality-preprocess.log"
    metadata = our_preprocess(root, data, log, n_cores=2, stride_by_split=strides)
    model = {
        "dim_model": args.quality_dim,
        "n_head": 4,
        "dim_feedforward": args.quality_ff or 4 * args.quality_dim,
        "num_layers": 2,
        "activation_fn": "gelu",
    }
    training = {
        "epochs": args.quality_epochs,
        "batch_size": 128,
        "learning_rate": args.quality_lr,
        "optimizer": {"name": "AdamW", "weight_decay": 0.0},
        "scheduler": {"name": "CosineAnnealingLR", "T_max": args.quality_epochs, "warmup_steps": 0},
        "scheduler_step_on": "epoch",
    }
    config = our_train_config(root, data.stem, model, training)
    print(f"   model_spec {json.dumps(model)}\n   training_spec {json.dumps(training)}")
    r = run_ours(root, config, "quality", {}, out / "logs" / "quality-train.log")
    print(
        f"  trained in {r['wall']:.0f} s ({r['rate']:,.0f} windows/s); validation loss per epoch: "
        f"{' '.join(f'{v:.4f}' for _, v in r['curve'])}"
    )
    test = root / metadata["split_paths"][2]
    ce = last_position_ce(r["models"][0], test, chain)
    rows = [
        ["entropy rate (exact, stationary pairs)", f"{rate:.4f}", "1.000"],
        ["true chain on the test targets (oracle)", f"{ce['oracle']:.4f}", f"{ce['oracle'] / rate:.3f}"],
        [f"ours, best model ({r['models'][0].name})", f"{ce['ce']:.4f}", f"{ce['ce'] / rate:.3f}"],
    ]
    print(f"\nnext-item cross-entropy at the last position of {ce['windows']:,} test windows (nats):")
    print_table(["", "nats", "/ entropy rate"], rows)


# -- 4. memory when streaming -------------------------------------------------------------------------


def memory(args, out: Path) -> None:
    work = out / "train-memory"
    columns = args.memory_columns
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    ram_sizes = {int(s) for s in args.memory_ram_sizes.split(",") if s}
    print(
        f"\n== 4. memory: {columns} categorical columns, windows of {SEQ_LENGTH}+1 every item, "
        f"{args.memory_sequences:,} x 200 per unit, 1 epoch"
    )
    model = {"dim_model": 32, "n_head": 2, "dim_feedforward": 64, "num_layers": 1}
    rows = []
    for size in sizes:
        n = args.memory_sequences * size
        rng = np.random.default_rng(31 + size)
        names = [f"c{i}" for i in range(columns)]
        data = write_long(work / f"wide-{n}.parquet", {c: rng.integers(0, 20, (n, 200)) for c in names})
        root = work / f"ours-{size}"
        metadata = our_preprocess(
            root,
            data,
            out / "logs" / f"memory-preprocess-{size}.log",
            n_cores=2,
            stride_by_split=[1, 1, 1],
            split_ratios=[0.9, 0.05, 0.05],
            merge_output=False,
            batches_per_file=args.batches_per_file,
        )
        windows = metadata["n_windows"]
        train_windows = list(windows.values())[0] if isinstance(windows, dict) else windows[0]
        in_memory = train_windows * columns * (SEQ_LENGTH + 1) * 4
        training = {
            "epochs": 1,
            "batch_size": 512,
            "learning_rate": 0.001,
            "shuffle_buffer_size": args.shuffle_buffer,
        }
        config = our_train_config(
            root,
            data.stem,
            model,
            training,
            target_columns=["c0"],
            export_pt=False,
            inference_batch_size=4096,
        )
        for in_ram in (False, True):
            if in_ram and size not in ram_sizes:
                continue
            flag = {"training_spec.load_full_data_to_ram": in_ram}
            r = run_ours(
                root,
                config,
                f"m{size}-{int(in_ram)}",
                flag,
                out / "logs" / f"memory-train-{size}-{in_ram}.log",
            )
            cells = [
                f"{train_windows:,}",
                f"{in_memory / 2**20:,.0f}",
                "in RAM" if in_ram else "streamed",
                f"{r['wall']:.0f}",
                f"{r['rate']:,.0f}",
                f"{r['peak'] / 2**20:,.0f}",
                f"{in_memory / r['peak']:.1f}",
            ]
            rows.append([f"{size}x", *cells])
            print(
                f"  {size}x {'in RAM' if in_ram else 'streamed'}: {r['wall']:.0f} s, "
                f"peak RSS {r['peak'] / 2**20:.0f} MB"
            )
        if args.delete_memory_data:
            shutil.rmtree(root / "data", ignore_errors=True)
            (root / "configs" / "metadata_configs" / f"{data.stem}.json").unlink(missing_ok=True)
    print(
        f"\nshuffle buffer {args.shuffle_buffer:,} windows, shards of {args.batches_per_file:,} windows, "
        f"batch 512, model dim 32, 1 layer; windows MB = training windows x {columns} columns x "
        f"{SEQ_LENGTH + 1} x 4 bytes"
    )
    print_table(
        [
            "size",
            "train windows",
            "windows MB",
            "data",
            "wall s",
            "windows/s",
            "peak RSS MB",
            "windows / RSS",
        ],
        rows,
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    arg = parser.add_argument
    arg("--parts", default="speed,flops,quality,memory", help="comma-separated: speed,flops,quality,memory")
    arg("--repeats", type=int, default=3, help="speed: alternated runs of each variant")
    arg("--epochs", type=int, default=3, help="speed: epochs of every run (the original's config has 3)")
    arg("--upstream", help=f"the original's binary (default {UPSTREAM_DEFAULT} if present)")
    arg("--alpha", type=float, default=0.2, help="Dirichlet concentration of the chain's rows")
    arg("--fast-lr", type=float, default=0.004, help="speed: learning rate of ours with fast settings")
    arg("--fast-batch-size", type=int, default=256, help="speed: batch size of ours with fast settings")
    arg("--log-interval", type=int, default=50, help="speed: batches between validations (fast settings)")
    arg("--peak-seconds", type=float, default=3.0, help="flops: seconds of the matmul loop")
    arg("--quality-sequences", type=int, default=8000)
    arg("--quality-epochs", type=int, default=3)
    arg("--quality-dim", type=int, default=128)
    arg("--quality-ff", type=int, default=0, help="quality: dim_feedforward; 0 means 4 x --quality-dim")
    arg("--quality-lr", type=float, default=0.001)
    arg(
        "--quality-stride", type=int, default=8, help="quality: stride of the training and validation windows"
    )
    arg("--memory-sizes", default="1,8,32", help="memory: data sizes in units of --memory-sequences")
    arg("--memory-ram-sizes", default="1,8", help="memory: sizes also run with load_full_data_to_ram")
    arg("--memory-sequences", type=int, default=250, help="memory: sequences of 200 items per unit")
    arg("--memory-columns", type=int, default=16)
    arg("--shuffle-buffer", type=int, default=16384, help="memory: training_spec.shuffle_buffer_size")
    arg("--batches-per-file", type=int, default=16384, help="memory: windows per shard")
    arg("--delete-memory-data", action="store_true", help="memory: delete each size's windows after use")
    arg("--out", default=str(HERE / "out"), help="data, projects and logs (git-ignored)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"speed", "flops", "quality", "memory"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}")
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started, peaks = time.perf_counter(), []
    if parts & {"speed", "flops"}:
        results = speed(args, out, peaks)
        if "flops" in parts:
            flops(args, out, results, peaks)
    if "quality" in parts:
        quality(args, out)
    if "memory" in parts:
        memory(args, out)
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
