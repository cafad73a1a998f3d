#!/usr/bin/env python
"""Benchmark `sequifier infer`: predictions/s against the original (PyPI sequifier 3.1.1.0) on the
same data and model size, batch 1 and batched, pt and ONNX; autoregressive items/s; the cost of
sampled predictions (temperature, top_k, top_p) against the argmax; memory as the input grows; the
model alone (no input or output) for reference.

    python benchmarks/infer.py [--parts speed,batch1,generate,sampling,memory,model] [--repeats 3]

Every inference is a whole process timed by the clock. Start-up (imports, model loading) is taken
out by also running each variant on a two-window input: rate = (windows of the big input - 2) /
(wall of the big input - wall of the small one). Runs of ours and the original alternate. Nothing
here asserts a timing: the script prints tables. See README.md ("infer").
"""

import argparse
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tools as bench  # noqa: E402  (data, configs and tool runners shared by the benchmarks)
from preprocess import measure, print_table  # noqa: E402

HERE = Path(__file__).resolve().parent
OURS, ENV = bench.OURS, bench.ENV


def head_of(path: Path, windows: int, target: Path) -> Path:
    """The first `windows` windows of a one-column window file, as a file of the same format."""
    if not target.is_file():
        pq.write_table(pq.read_table(path).slice(0, windows), target)
    return target


def prepare(args, out: Path) -> dict:
    """The train benchmark's data and model (dim 64, 2 layers): ours trained once with ONNX
    export, the original's trained once (its config, 1 epoch); both reused when present."""
    work = out / "infer"
    chain = bench.markov_chain(bench.SYMBOLS, 0.2, seed=11)
    data = bench.write_long(
        work / "categorical.csv", {"itemId": bench.sample_chain(chain, 2000, 200, seed=12)}
    )
    ours = work / "ours"
    metadata = bench.our_preprocess(ours, data, out / "logs" / "infer-ours-preprocess.log", n_cores=2)
    training = {**bench.speed_training(args), "epochs": 1}
    config = bench.our_train_config(
        ours, data.stem, bench.SPEED_MODEL, training, input_columns=["itemId"], target_columns=["itemId"],
        export_onnx=True, export_embedding_model=False,
    )  # fmt: skip
    (ours / "configs" / "infer.yaml").write_text("write_format: csv\ndevice: cpu\n")
    if not list((ours / "models").glob("sequifier-default-best-*.onnx")):
        measure([OURS, "train", "--config-path", str(config)], out / "logs" / "infer-ours-train.log", ENV)
    split = ours / metadata["split_paths"][0]
    found = {"work": work, "ours": ours, "split": split, "windows": metadata["n_windows"]["train"]}
    found["test"] = ours / metadata["split_paths"][2]
    found["pt"] = next((ours / "models").glob("sequifier-default-best-*.pt"))
    found["onnx"] = next((ours / "models").glob("sequifier-default-best-*.onnx"))
    upstream = Path(args.upstream) if args.upstream else bench.UPSTREAM_DEFAULT
    if upstream.exists():
        root = work / "upstream"
        bench.upstream_project(root, data, upstream, out / "logs" / "infer-upstream-preprocess.log")
        if not list((root / "models").glob("*-best-*.onnx")):
            text = (root / "configs" / "train.yaml").read_text()
            text = re.sub(r"training_plan: \{epochs: \d+\}", "training_plan: {epochs: 1}", text)
            (root / "configs" / "train.yaml").write_text(text)
            bench.run_upstream(root, upstream, out / "logs" / "infer-upstream-train.log")
        found |= {"upstream": upstream, "upstream_root": root}
        found["upstream_model"] = next((root / "models").glob("*-best-*.onnx"))
        found["upstream_split"] = root / "data" / "categorical-split0.parquet"
    return found


def ours_command(setup: dict, model: str, data: Path, output: Path, **settings) -> list:
    flags = bench.set_flags({"inference_batch_size": settings.pop("batch", 1024), **settings})
    ours = setup["ours"]
    return [
        OURS, "infer", "--project-root", str(ours), "--config-path", str(ours / "configs/infer.yaml"),
        "--model-path", str(setup[model]), "--data-path", str(data), "--output-path", str(output), *flags,
    ]  # fmt: skip


def upstream_command(setup: dict, data: Path, batch: int, **extra) -> list:
    root = setup["upstream_root"]
    text = (bench.UPSTREAM_CONFIGS / "infer.yaml").read_text()
    text = re.sub(r"(?m)^project_root: .*$", f"project_root: {root}", text)
    text = re.sub(r"(?m)^inference_batch_size: .*$", f"inference_batch_size: {batch}", text)
    text += "".join(f"{key}: {value}\n" for key, value in extra.items())
    config = root / "configs" / f"infer-bench-{batch}{'-ar' if extra else ''}.yaml"
    config.write_text(text)
    return [
        "env", "-C", str(root), str(setup["upstream"]), "infer", "--config-path", str(config),
        "--model-path", str(setup["upstream_model"]), "--data-path", str(data),
    ]  # fmt: skip


def rate(args, variants: dict, small: int, big: int, log: Path) -> dict:
    """{variant: (rate per s, wall of the big input, peak RSS)}: medians over alternated repeats."""
    walls = {name: {"small": [], "big": [], "peak": []} for name in variants}
    for _ in range(args.repeats):
        for name, commands in variants.items():
            for size in ("small", "big"):
                wall, peak = measure(commands[size], log, ENV)
                walls[name][size].append(wall)
                walls[name]["peak"].append(peak) if size == "big" else None
    result = {}
    for name, w in walls.items():
        small_s, big_s = statistics.median(w["small"]), statistics.median(w["big"])
        result[name] = ((big - small) / max(big_s - small_s, 1e-9), big_s, small_s, max(w["peak"]))
    return result


def speed(args, setup: dict, out: Path, batch: int, windows: int, label: str) -> None:
    """Whole-process windows/s of ours (pt and ONNX) and the original (ONNX) at one batch size."""
    work = setup["work"]
    ours_big = (
        setup["split"]
        if windows >= setup["windows"]
        else head_of(setup["split"], windows, work / f"ours-{windows}.parquet")
    )
    ours_small = head_of(setup["split"], 2, work / "ours-2.parquet")
    n = min(windows, setup["windows"])
    variants = {}
    for model in ("pt", "onnx"):
        variants[f"ours {model}"] = {
            "small": ours_command(
                setup, model, ours_small, work / "out-small", batch=batch, output_probabilities=False
            ),
            "big": ours_command(
                setup, model, ours_big, work / "out-big", batch=batch, output_probabilities=False
            ),
        }
    if "upstream" in setup:
        up = setup["upstream_split"]
        up_big = (
            up
            if windows >= setup["windows"]
            else head_of(up, windows, setup["upstream_root"] / f"data/up-{windows}.parquet")
        )
        up_small = head_of(up, 2, setup["upstream_root"] / "data/up-2.parquet")
        variants["original onnx"] = {
            "small": upstream_command(setup, up_small, batch),
            "big": upstream_command(setup, up_big, batch),
        }
    results = rate(args, variants, 2, n, out / "logs" / f"infer-{label}.log")
    base = results.get("original onnx", (None,))[0]
    rows = [
        [
            name,
            f"{r:,.0f}",
            f"{big:.2f}",
            f"{small:.2f}",
            f"{r / base:.2f}x" if base else "-",
            f"{peak / 2**20:.0f}",
        ]
        for name, (r, big, small, peak) in results.items()
    ]
    print(f"\ninfer {n:,} windows (seq 32, dim 64, 2 layers), batch {batch}, CPU; medians of {args.repeats}")
    print_table(
        ["model", "windows/s", "wall s", "start-up s (2 windows)", "vs original", "peak RSS MB"], rows
    )


def first_sequence(path: Path, target: Path) -> Path:
    """The windows of the first sequence of a window file."""
    table = pq.read_table(path)
    ids = table.column("sequenceId")
    pq.write_table(table.filter(ids.to_numpy() == ids[0].as_py()), target)
    return target


def generate(args, setup: dict, out: Path) -> None:
    """Autoregressive items/s: every sequence of the training split continued by --steps items."""
    work, steps = setup["work"], args.steps
    sequences = len(pq.read_table(setup["split"], columns=["sequenceId"]).column(0).unique())
    ar = {"autoregression": True, "autoregression_total_steps": steps, "output_probabilities": False}
    small = first_sequence(setup["split"], work / "one-sequence.parquet")
    variants = {
        f"ours {model}": {
            "small": ours_command(setup, model, small, work / "out-ar-small", batch=args.batch, **ar),
            "big": ours_command(setup, model, setup["split"], work / "out-ar", batch=args.batch, **ar),
        }
        for model in ("pt", "onnx")
    }
    if "upstream" in setup:
        up = setup["upstream_split"]
        up_small = first_sequence(up, setup["upstream_root"] / "data" / "up-one-sequence.parquet")
        extra = {"autoregressive": "true", "generation_steps": steps}
        variants["original onnx"] = {
            "small": upstream_command(setup, up_small, args.batch, **extra),
            "big": upstream_command(setup, up, args.batch, **extra),
        }
    results = rate(args, variants, steps, sequences * steps, out / "logs" / "infer-generate.log")
    base = results.get("original onnx", (None,))[0]
    rows = [
        [name, f"{r:,.0f}", f"{big:.2f}", f"{r / base:.2f}x" if base else "-"]
        for name, (r, big, _, _) in results.items()
    ]
    print(
        f"\nautoregression: {sequences:,} sequences x {steps} items, batch {args.batch}, CPU; "
        f"medians of {args.repeats}"
    )
    print_table(["model", "items/s", "wall s", "vs original"], rows)


SAMPLING = {  # what the sampled variants set besides sample_from_distribution_columns
    "sampled": {},
    "sampled, temperature 0.8, top_k 10": {"temperature": 0.8, "top_k": 10},
    "sampled, temperature 0.8, top_p 0.9": {"temperature": 0.8, "top_p": 0.9},
}


def sampling(args, setup: dict, out: Path) -> None:
    """Windows/s of ours (pt and ONNX) drawing the prediction from the distribution, with and without
    temperature, top_k and top_p, against the argmax of the same model in the same run."""
    work, batch = setup["work"], 1024
    small = head_of(setup["split"], 2, work / "ours-2.parquet")
    variants = {}
    for model in ("pt", "onnx"):
        for label, extra in {"argmax": None, **SAMPLING}.items():
            settings = {"batch": batch, "output_probabilities": False}
            if extra is not None:
                settings |= {"sample_from_distribution_columns": ["itemId"], "seed": 7, **extra}
            variants[f"ours {model}, {label}"] = {
                size: ours_command(setup, model, data, work / f"out-sampling-{size}", **dict(settings))
                for size, data in (("small", small), ("big", setup["split"]))
            }
    results = rate(args, variants, 2, setup["windows"], out / "logs" / "infer-sampling.log")
    rows = []
    for name, (r, big, _, _) in results.items():
        argmax = results[name.split(", ")[0] + ", argmax"][0]
        rows.append([name, f"{r:,.0f}", f"{big:.2f}", f"{r / argmax:.2f}"])
    print(f"\nsampling: {setup['windows']:,} windows, batch {batch}, CPU; medians of {args.repeats}")
    print_table(["model", "windows/s", "wall s", "vs argmax"], rows)


def memory(args, setup: dict, out: Path) -> None:
    """Peak RSS of ours as the input grows (a folder of copies of the training split)."""
    rows, base = [], None
    for size in map(int, args.memory_sizes.split(",")):
        folder = setup["work"] / f"copies-{size}"
        if not folder.is_dir():
            folder.mkdir()
            for i in range(size):
                (folder / f"part-{i:05d}.parquet").hardlink_to(setup["split"])
        wall, peak = measure(
            ours_command(setup, "onnx", folder, setup["work"] / "out-memory"),
            out / "logs" / "infer-memory.log",
            ENV,
        )
        base = base or peak
        windows = size * setup["windows"]
        rows.append(
            [
                f"{size}x",
                f"{windows:,}",
                f"{wall:.1f}",
                f"{windows / wall:,.0f}",
                f"{peak / 2**20:.0f}",
                f"{peak / base:.2f}",
            ]
        )
        shutil.rmtree(setup["work"] / "out-memory", ignore_errors=True)
    print("\nmemory: ours (ONNX, batch 1024, outputs written) on growing inputs")
    print_table(["input", "windows", "wall s", "windows/s (with start-up)", "peak RSS MB", "vs 1x"], rows)


def model_only(args, setup: dict) -> None:
    """The models alone, in this process: windows/s without reading or writing, best of 10 rounds
    taken in turns (the original's ONNX file with the inputs it declares)."""
    import onnxruntime

    from sequifier.infer.predictors import load_predictor

    ids = np.random.default_rng(0).integers(3, 50, size=(args.batch, 32))
    runners = {}
    for model in ("pt", "onnx"):
        predictor = load_predictor(setup[model], "cpu", False)
        runners[f"ours {model}"] = lambda x, p=predictor: p({"itemId": x.astype(np.int32)})
    if "upstream" in setup:
        session = onnxruntime.InferenceSession(
            str(setup["upstream_model"]), providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]  # its ids (int64) and a mask of valid positions

        def upstream(x, session=session, names=names):
            return session.run(None, {names[0]: x.astype(np.int64), names[1]: np.ones(x.shape, dtype=bool)})

        runners["original onnx"] = upstream
    rows = []
    for batch, calls in ((1, 200), (args.batch, 10)):
        best = dict.fromkeys(runners, np.inf)
        for _ in range(10):
            for name, runner in runners.items():
                runner(ids[:batch])
                started = time.perf_counter()
                for _ in range(calls):
                    runner(ids[:batch])
                best[name] = min(best[name], (time.perf_counter() - started) / calls)
        base = best.get("original onnx")
        for name, seconds in best.items():
            rows.append([name, batch, f"{batch / seconds:,.0f}", f"{base / seconds:.2f}x" if base else "-"])
    print("\nthe models alone (no input or output), this process, CPU; best of 10 rounds in turns")
    print_table(["model", "batch", "windows/s", "vs original"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    arg = parser.add_argument
    arg("--parts", default="speed,batch1,generate,sampling,memory,model")
    arg("--repeats", type=int, default=3, help="alternated whole-process runs of each variant")
    arg("--batch", type=int, default=128, help="the batch size compared (the original's config has 128)")
    arg("--batch1-windows", type=int, default=2000, help="batch1: windows inferred one at a time")
    arg("--steps", type=int, default=20, help="generate: items generated per sequence")
    arg("--memory-sizes", default="1,4,16", help="memory: input sizes in copies of the training split")
    arg("--upstream", help=f"the original's binary (default {bench.UPSTREAM_DEFAULT} if present)")
    arg("--epochs", type=int, default=1, help=argparse.SUPPRESS)  # the train benchmark's settings
    arg("--out", default=str(HERE / "out"), help="data, projects and logs (git-ignored)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setup = prepare(args, out)
    print(
        f"ours {setup['pt'].name} / {setup['onnx'].name}; original {setup.get('upstream_model', 'not found')}"
    )
    if "speed" in parts:
        speed(args, setup, out, args.batch, setup["windows"], "speed")
        speed(args, setup, out, 1024, setup["windows"], "speed-1024")
    if "batch1" in parts:
        speed(args, setup, out, 1, args.batch1_windows, "batch1")
    if "generate" in parts:
        generate(args, setup, out)
    if "sampling" in parts:
        sampling(args, setup, out)
    if "memory" in parts:
        memory(args, setup, out)
    if "model" in parts:
        model_only(args, setup)
    print("GPU: none on this machine; run with device: cuda (pt) where one is available.")
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
