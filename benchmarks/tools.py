"""What the benchmarks share: data from a hidden order-2 Markov chain, configs of ours and of the
original sequifier (PyPI 3.1.1.0), and whole-process runs of both tools' training with what their
files say about it."""

import csv
import json
import math
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import measure  # noqa: E402  (the sibling benchmark's process runner)

HERE = Path(__file__).resolve().parent
OURS = shutil.which("sequifier", path=str(Path(sys.executable).parent)) or "sequifier"
UPSTREAM_DEFAULT = Path("/root/venvs/upstream/bin/sequifier")
UPSTREAM_CONFIGS = Path("/work/shared/upstream/categorical")
UPSTREAM_MODEL = "cat-small"
SEQ_LENGTH = 32
SYMBOLS = 50
ENV = {"WANDB_MODE": "disabled"}

# -- data: a hidden order-2 Markov chain ---------------------------------------------------------


def markov_chain(symbols: int, alpha: float, seed: int) -> np.ndarray:
    """P[a, b, c] = P(next = c | the two items before are a, b); each row drawn from Dirichlet(alpha)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(symbols, alpha), size=(symbols, symbols))


def stationary_pairs(chain: np.ndarray, tol: float = 1e-15, max_iter: int = 100_000) -> np.ndarray:
    """The stationary distribution over pair states (a, b), by power iteration: (a, b) -> (b, c)."""
    k = chain.shape[0]
    pi = np.full((k, k), 1.0 / k**2)
    for _ in range(max_iter):
        new = np.einsum("ab,abc->bc", pi, chain)
        done = np.abs(new - pi).sum() < tol
        pi = new
        if done:
            break
    return pi / pi.sum()


def entropy_rate(chain: np.ndarray) -> float:
    """Entropy rate in nats: sum over pair states of stationary weight x entropy of the next item."""
    logs = np.log(np.where(chain > 0, chain, 1.0))
    return float((stationary_pairs(chain) * -(chain * logs).sum(-1)).sum())


def sample_chain(chain: np.ndarray, n: int, length: int, seed: int) -> np.ndarray:
    """n sequences of `length` symbols; the first two items of each are uniform."""
    rng = np.random.default_rng(seed)
    k = chain.shape[0]
    cumulative = chain.cumsum(-1)
    x = np.empty((n, length), dtype=np.int64)
    x[:, :2] = rng.integers(0, k, (n, 2))
    for t in range(2, length):
        rows = cumulative[x[:, t - 2], x[:, t - 1]]
        x[:, t] = np.minimum((rng.random(n)[:, None] > rows).sum(1), k - 1)
    return x


def write_long(path: Path, columns: dict) -> Path:
    """{name: [sequences, length] ints} -> the long table sequenceId, itemPosition, columns (csv/parquet)."""
    if path.is_file():
        return path
    n, length = next(iter(columns.values())).shape
    table = pa.table(
        {
            "sequenceId": np.arange(n).repeat(length),
            "itemPosition": np.tile(np.arange(length), n),
            **{name: values.ravel() for name, values in columns.items()},
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".csv":
        pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none"))
    else:
        pq.write_table(table, tmp)
    tmp.rename(path)
    return path


# -- running the tools ---------------------------------------------------------------------------


def yaml_block(mapping: dict) -> str:
    """A config as YAML (flow style for nested values, which our loader reads)."""
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in mapping.items())


def our_preprocess(root: Path, data: Path, log: Path, **extra) -> dict:
    """Preprocess `data` into root with our CLI (once; reused if its metadata is there)."""
    metadata = root / "configs" / "metadata_configs" / f"{data.stem}.json"
    config = root / "configs" / "preprocess.yaml"
    settings = {
        "project_root": str(root),
        "data_path": str(data),
        "seq_length": SEQ_LENGTH,
        "stride_by_split": [4, 4, 4],
        "split_method": "between_sequence",
        "split_ratios": [0.8, 0.1, 0.1],
        "write_format": "parquet",
        **extra,
    }
    text = yaml_block(settings)
    if metadata.is_file() and config.is_file() and config.read_text() == text:
        return json.loads(metadata.read_text())
    shutil.rmtree(root / "data", ignore_errors=True)
    metadata.unlink(missing_ok=True)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    wall, _ = measure([OURS, "preprocess", "--config-path", str(config)], log, ENV)
    print(f"  ours: preprocessed {data.name} in {wall:.1f} s")
    return json.loads(metadata.read_text())


def our_train_config(root: Path, metadata_name: str, model: dict, training: dict, **top) -> Path:
    config = root / "configs" / "train.yaml"
    settings = {
        "project_root": str(root),
        "model_name": "default",
        "metadata_config_path": f"configs/metadata_configs/{metadata_name}.json",
        "seed": 1010,
        "inference_batch_size": 1024,
        "export_generative_model": True,
        "export_embedding_model": False,
        "export_onnx": False,
        "export_pt": True,
        **top,
        "model_spec": model,
        "training_spec": {"device": "cpu", **training},
    }
    config.write_text(yaml_block(settings))
    return config


def set_flags(overrides: dict) -> list:
    return [a for key, value in overrides.items() for a in ("--set", f"{key}={json.dumps(value)}")]


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO sequifier\.train(?:\.\w+)*: (.*)$")


def log_times(path: Path, pattern: str) -> list:
    """Epoch seconds of our log lines whose message matches `pattern` (asctime is local time)."""
    found = []
    for line in path.read_text().splitlines():
        match = LOG_TIME.match(line)
        if match and re.match(pattern, match.group(2)):
            found.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def run_ours(root: Path, config: Path, name: str, overrides: dict, log: Path) -> dict:
    """One whole `sequifier train`; returns wall, start-up, training time, rate, losses over time."""
    shutil.rmtree(root / "checkpoints", ignore_errors=True)  # never resume
    for stale in [*root.glob(f"models/sequifier-{name}-*"), *root.glob(f"logs/sequifier-{name}*")]:
        stale.unlink()
    cmd = [OURS, "train", "--config-path", str(config), "--model-name", name, *set_flags(overrides)]
    launched = time.time()
    wall, peak = measure(cmd, log, ENV)
    logs = root / "logs"
    rows = list(csv.DictReader((logs / f"sequifier-{name}-metrics.csv").read_text().splitlines()))
    record_times = log_times(logs / f"sequifier-{name}.log", r"epoch \d+ batch \d+: ")
    started = log_times(logs / f"sequifier-{name}.log", rf"training {re.escape(name)}: ")[0]
    text = (logs / f"sequifier-{name}.log").read_text()
    params, train_windows = map(int, re.search(r": (\d+) parameters, (\d+) training", text).groups())
    # the epoch rows of trained epochs (the row of the untrained model, epoch 0, has no rate)
    epochs = [r for r in rows if r["kind"] == "epoch" and r["windows_per_s"] not in ("", "nan")]
    # windows_per_s of an epoch row: windows / time of its training loop (batching included, validation not)
    train_s = sum(train_windows / float(r["windows_per_s"]) for r in epochs)
    records = [r for r in rows if not r["kind"].startswith("baseline")]  # one log line each
    curve = [(t - launched, float(r["validation_loss"])) for t, r in zip(record_times, records)]
    summary = run_summary(wall, peak, started - launched, train_s, train_windows * len(epochs), curve)
    return {
        **summary,
        "final": float(epochs[-1]["validation_loss"]),
        "params": params,
        "models": sorted((root / "models").glob(f"sequifier-{name}-best-*.pt")),
    }


def run_summary(wall: float, peak: float, startup: float, train_s: float, windows: int, curve: list) -> dict:
    """What both tools' runs report: times, windows trained, rate, and the validation curve."""
    return {
        "wall": wall,
        "peak": peak,
        "startup": startup,
        "train_s": train_s,
        "windows": windows,
        "rate": windows / train_s,
        "final": curve[-1][1],
        "last_record": curve[-1][0],
        "after": wall - curve[-1][0],
        "curve": curve,
    }


def upstream_project(root: Path, data: Path, binary: Path, log: Path) -> None:
    """The original's project with the shared configs adapted; preprocessed once (reused)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    target = root / "data" / "categorical.csv"
    if not target.is_file():
        shutil.copy(data, target)
    for name in ("preprocess.yaml", "train.yaml", "infer.yaml"):
        text = (UPSTREAM_CONFIGS / name).read_text()
        (root / "configs" / name).write_text(re.sub(r"(?m)^project_root: .*$", f"project_root: {root}", text))
    splits = [root / "data" / f"categorical-split{k}.parquet" for k in range(3)]
    if not all(p.is_file() for p in splits):
        cmd = ["env", "-C", str(root), str(binary), "preprocess", "--config-path", "configs/preprocess.yaml"]
        wall, _ = measure(cmd, log, {**ENV, "TORCHINDUCTOR_CACHE_DIR": str(root / ".inductor")})
        print(f"  original: preprocessed {data.name} in {wall:.1f} s")


def run_upstream(root: Path, binary: Path, log: Path) -> dict:
    """One whole train of the original; its losses and times from logs/cat-small/*.csv."""
    for folder in ("models", "checkpoints", "logs"):
        shutil.rmtree(root / folder, ignore_errors=True)
    env = {**ENV, "TORCHINDUCTOR_CACHE_DIR": str(root / ".inductor")}
    # the original resolves its config's paths from the working directory
    cmd = ["env", "-C", str(root), str(binary), "train", "--config-path", "configs/train.yaml"]
    launched = time.time()
    wall, peak = measure(cmd, log, env)
    logs = root / "logs" / UPSTREAM_MODEL

    def utc(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()

    validations = [
        r
        for r in csv.DictReader((logs / f"{UPSTREAM_MODEL}-validation-full.csv").read_text().splitlines())
        if r["metric"] == "loss" and r["target"] == "__total__"
    ]
    # its own timer: seconds_per_batch, the mean over the batches since the previous row of the epoch
    timed_s, previous = 0.0, {}
    for r in csv.DictReader((logs / f"{UPSTREAM_MODEL}-training.csv").read_text().splitlines()):
        if r["metric"] != "loss":
            continue
        epoch, batch = int(r["epoch"]), int(r["batch"])
        timed_s += float(r["seconds_per_batch"]) * (batch - previous.get(epoch, 0))
        previous[epoch] = batch
    train_windows = int(re.search(r"Dataset loaded with (\d+) samples", log.read_text())[1])
    epochs = len(previous)
    # by the clock, like ours: from the end of each validation (timestamp_utc; elapsed_seconds is its
    # duration) to the start of the next, which holds the epoch's training loop
    ends = [utc(r["timestamp_utc"]) for r in validations]
    durations = [float(r["elapsed_seconds"]) for r in validations]
    train_s = sum(ends[i] - durations[i] - ends[i - 1] for i in range(1, len(ends)))
    started = ends[0] - durations[0]
    curve = [(t - launched, float(r["value"])) for t, r in zip(ends, validations)]
    summary = run_summary(wall, peak, started - launched, train_s, train_windows * epochs, curve)
    return {**summary, "timed_s": timed_s, "models": sorted((root / "models").glob("*"))}


def crossing(curve: list, target: float) -> float:
    """Seconds from launch to the first validation at or below target (inf if never)."""
    return next((t for t, loss in curve if loss <= target), math.inf)


def fmt_s(value: float) -> str:
    return "not reached" if math.isinf(value) else "-" if math.isnan(value) else f"{value:.1f}"


# -- 1. speed against the original ---------------------------------------------------------------

# the original's model (its defaults: SwiGLU feed-forward, RMSNorm, pre-norm, learned positions)
SPEED_MODEL = {
    "dim_model": 64,
    "n_head": 4,
    "dim_feedforward": 128,
    "num_layers": 2,
    "activation_fn": "swiglu",
    "normalization": "rmsnorm",
    "norm_first": True,
    "positional_encoding": "learned",
}


def speed_training(args) -> dict:
    """The original's settings in our schema (AdamW, StepLR per epoch, no clipping, no dropout)."""
    return {
        "epochs": args.epochs,
        "batch_size": 128,
        "learning_rate": 0.001,
        "optimizer": {"name": "AdamW"},
        "scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.99},
        "scheduler_step_on": "epoch",
        "gradient_clip": None,
        "dropout": 0.0,
    }
