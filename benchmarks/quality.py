#!/usr/bin/env python
"""Which training defaults generalize? The template of `sequifier make`, resized, against an
order-2 Markov chain whose entropy rate is known exactly.

    python benchmarks/quality.py                                  # every setting below
    python benchmarks/quality.py --settings template,dropout-0.1  # some of them
    python benchmarks/quality.py --list                           # the settings and their overrides

Data: 1,000 sequences x 200 items of the chain of train.py's quality part (50 symbols, Dirichlet
alpha 0.2), a long CSV table. Project: `sequifier make`, then only data_path, seq_length 32,
target_columns [itemId], dim_model 64, n_head 4, num_layers 2, dim_feedforward 128 and epochs
change; the rest (split, strides, optimizer, learning rate, ...) is the template's. Each setting
is a dict of `--set` overrides of the train config, trained as a whole `sequifier train` process
(W&B disabled, OMP_NUM_THREADS=1, no ONNX or embedding export). Measure: the cross-entropy at the
last position of every test window (full context) of the model exported as best, divided by the
entropy rate; also per epoch from the checkpoints, and as a paired difference to the template on
the same windows (mean +- standard error). References: the true chain and the Bayes predictor of
the training items. Results are kept in --out/results/NAME.json and reused while the setting and
the configs are the same (--rerun preprocesses and trains again, e.g. after the package changed).
See README.md ("quality.py").
"""

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import print_table  # noqa: E402
from tools import (  # noqa: E402
    ENV,
    HERE,
    OURS,
    SEQ_LENGTH,
    SYMBOLS,
    entropy_rate,
    markov_chain,
    run_ours,
    sample_chain,
    write_long,
)

SEQUENCES, LENGTH = 1000, 200
# what changes in the template (everything else stays as `sequifier make` writes it)
PREPROCESS_KEYS = {"seq_length": SEQ_LENGTH}
MODEL_KEYS = {"dim_model": 64, "n_head": 4, "num_layers": 2, "dim_feedforward": 128}
# harness only: nothing here changes what is trained
HARNESS = {"export_onnx": False, "export_embedding_model": False}

T = "training_spec."
# name -> overrides of the train config (dotted keys). "template" is the template as it is.
SETTINGS = {
    "template": {},
    "dropout-0.1": {T + "dropout": 0.1},
    "dropout-0.2": {T + "dropout": 0.2},
    "dropout-0.3": {T + "dropout": 0.3},
    "wd-0.1": {T + "optimizer.weight_decay": 0.1},
    "lr-0.001": {T + "learning_rate": 0.001},
    "batch-256": {T + "batch_size": 256},
    "lr-0.01": {T + "learning_rate": 0.01},
    "warmup-500": {T + "scheduler.warmup_steps": 500},
    "es-3": {T + "epochs": 40, T + "early_stopping_epochs": 3},
    "rope": {"model_spec.positional_encoding": "rope"},  # not a training default: a probe of memorizing
    "wide": {  # not a default either: a probe of the model's size (dim 128, feed-forward 512)
        "model_spec.dim_model": 128,
        "model_spec.dim_feedforward": 512,
        T + "epochs": 40,
        T + "early_stopping_epochs": 3,
    },
    "wide-lr-0.001": {
        "model_spec.dim_model": 128,
        "model_spec.dim_feedforward": 512,
        T + "learning_rate": 0.001,
        T + "epochs": 40,
        T + "early_stopping_epochs": 3,
    },
}


def project(out: Path, data: Path, epochs: int, remake: bool) -> Path:
    """`sequifier make`, the keys above edited in place (comments kept), preprocessed once (again
    if the configs changed, or with remake)."""
    import yaml

    fresh = out / "project-new"
    shutil.rmtree(fresh, ignore_errors=True)
    subprocess.run([OURS, "make", fresh.name], cwd=out, check=True, capture_output=True)
    (fresh / "data" / "example.csv").unlink()
    shutil.copy(data, fresh / "data" / data.name)
    edits = {
        "preprocess.yaml": {"data_path": f"data/{data.name}", **PREPROCESS_KEYS},
        "train.yaml": {"target_columns": ["itemId"], **MODEL_KEYS, "epochs": epochs},
    }
    for name, keys in edits.items():
        path = fresh / "configs" / name
        before = path.read_text()
        after = before
        for key, value in keys.items():
            pattern = re.compile(rf"^(\s*{key}:)[^#\n]*?(\s*#.*)?$", re.M)
            text = json.dumps(value).replace("\\", "\\\\")  # a replacement template: \ escaped
            after, n = pattern.subn(rf"\g<1> {text}\g<2>", after, 1)  # group 2 (a comment) may be empty
            if n != 1:
                raise SystemExit(f"configs/{name} of the template has no key {key!r}")
        changed = {k for k, (a, b) in zip_flat(yaml.safe_load(before), yaml.safe_load(after)) if a != b}
        if not changed <= set(keys):  # nothing else was touched
            raise SystemExit(
                f"configs/{name}: editing {sorted(keys)} also changed {sorted(changed - set(keys))}"
            )
        path.write_text(after)
    root = out / "project"
    same = root.is_dir() and all(
        (root / "configs" / n).is_file()
        and (root / "configs" / n).read_text() == (fresh / "configs" / n).read_text()
        for n in ("preprocess.yaml", "train.yaml")
    )
    if same and not remake and (root / "configs" / "metadata_configs" / f"{data.stem}.json").is_file():
        shutil.rmtree(fresh)  # the same project, already preprocessed
        return root
    shutil.rmtree(root, ignore_errors=True)
    fresh.rename(root)
    started = time.perf_counter()
    log = out / "logs" / "preprocess.log"
    with open(log, "w") as f:
        subprocess.run(
            [OURS, "preprocess", "--n-cores", "1"],
            cwd=root,
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env(),
        )
    print(f"preprocessed {data.name} in {time.perf_counter() - started:.1f} s ({log})")
    return root


def zip_flat(a: dict, b: dict) -> list:
    """[(key, (value in a, value in b))] over the leaves of two nested configs (key: its last part)."""
    pairs = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            pairs += zip_flat(x, y)
        else:
            pairs.append((key, (x, y)))
    return pairs


def env() -> dict:
    return {**os.environ, **ENV}


def windows(path: Path):
    """The encoded windows of a split, [n, W + 1] ids, oldest first."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return np.stack([table.column(str(i)).to_numpy() for i in range(SEQ_LENGTH, -1, -1)], 1).astype(np.int64)


def last_ce(model, values, batch: int = 4096) -> list:
    """Per window, the model's cross-entropy (nats) at its last position (train.py's measure)."""
    import torch

    found = []
    with torch.no_grad():
        for start in range(0, len(values), batch):
            part = torch.from_numpy(values[start : start + batch])
            logits = model({"itemId": part[:, :-1].int()})["itemId"][:, -1]
            found += torch.nn.functional.cross_entropy(logits.float(), part[:, -1], reduction="none").tolist()
    return found


def epoch_curve(root: Path, name: str, values) -> list:
    """[epoch, test CE at the last position] per epoch, from the run's checkpoints."""
    import torch

    from sequifier.model.network import ModelArgs, Transformer

    curve = []
    for path in sorted(
        root.glob(f"checkpoints/sequifier-{name}-epoch-*.pt"), key=lambda p: int(p.stem.split("-")[-1])
    ):
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = Transformer(ModelArgs.from_dict(state["model_args"]))
        model.load_state_dict(state["model"])
        model.eval()
        ce = last_ce(model, values)
        curve.append([int(path.stem.split("-")[-1]), sum(ce) / len(ce)])
    return curve


def train(root: Path, name: str, overrides: dict, test: str, out: Path) -> dict:
    from sequifier.model.export import load_bundle

    settings = {"project_root": str(root), **HARNESS, **overrides}
    r = run_ours(root, root / "configs" / "train.yaml", name, settings, out / "logs" / f"train-{name}.log")
    best = r["models"][0]
    values = windows(root / test)
    per_window = last_ce(load_bundle(best)[0].eval(), values)  # the model the run exports as best
    curve = epoch_curve(root, name, values)
    rows = csv.DictReader((root / "logs" / f"sequifier-{name}-metrics.csv").read_text().splitlines())
    validation = [float(r["validation_loss"]) for r in rows if r["kind"] == "epoch" and int(r["epoch"]) > 0]
    return {
        "overrides": overrides,
        "epochs": len(validation),
        "best_epoch": int(re.search(r"-best-(\d+)\.pt$", best.name)[1]),
        "validation_loss": validation,  # sequifier's, per epoch from 1
        "curve": curve,  # [epoch, test CE at the last position]
        "test_ce": sum(per_window) / len(per_window),
        "per_window": per_window,  # for paired comparisons between settings
        "wall": r["wall"],
        "params": r["params"],
    }


def bayes_floor(sequences, train_items: int, alpha: float, targets) -> float:
    """The best a predictor of these training items can expect: the posterior predictive of the pair
    state's counts in the training items under the chain's own prior, Dirichlet(alpha), on the test
    targets ([n, 3] symbols: the two before and the target)."""
    import numpy as np

    counts = np.zeros((SYMBOLS,) * 3)
    seen = sequences[:, :train_items]
    np.add.at(counts, (seen[:, :-2].ravel(), seen[:, 1:-1].ravel(), seen[:, 2:].ravel()), 1)
    p = (counts + alpha) / (counts + alpha).sum(-1, keepdims=True)
    return float(-np.log(p[targets[:, 0], targets[:, 1], targets[:, 2]]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    arg = parser.add_argument
    arg("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS (--list)")
    arg("--list", action="store_true", help="print the settings and exit")
    arg("--epochs", type=int, default=20, help="training_spec.epochs written into the project's train.yaml")
    arg("--alpha", type=float, default=0.2, help="Dirichlet concentration of the chain's rows (train.py's)")
    arg("--rerun", action="store_true", help="preprocess and train again even if results are kept")
    arg("--out", default=str(HERE / "out" / "quality"), help="data, project, logs, results (git-ignored)")
    args = parser.parse_args()
    if args.list:
        print_table(["setting", "overrides"], [[n, json.dumps(o)] for n, o in SETTINGS.items()])
        return
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # for the trainings and this process
    import numpy as np  # after the thread settings

    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    chain = markov_chain(SYMBOLS, args.alpha, seed=21)  # train.py's quality chain
    sequences = sample_chain(chain, SEQUENCES, LENGTH, 23)
    data = write_long(out / "data" / f"markov-{SEQUENCES}.csv", {"itemId": sequences})
    rate = entropy_rate(chain)
    root = project(out, data, args.epochs, args.rerun)
    metadata = json.loads((root / "configs" / "metadata_configs" / f"{data.stem}.json").read_text())
    test = metadata["split_paths"][2]
    decode = np.full(metadata["n_classes"]["itemId"], -1)
    for value, i in metadata["id_maps"]["itemId"].items():
        decode[i] = int(value)
    targets = decode[windows(root / test)[:, -3:]]
    seen = metadata["n_items"]["train"] // SEQUENCES  # within_sequence: the first items of each
    floor, counts_only = (bayes_floor(sequences, seen, a, targets) for a in (args.alpha, 0.01))
    configs = "".join((root / "configs" / n).read_text() for n in ("preprocess.yaml", "train.yaml"))
    print(f"{data} ({SEQUENCES:,} x {LENGTH}), entropy rate {rate:.4f} nats; project {root}; {OURS}")
    results = {}
    for name in names:
        key = hashlib.sha256(json.dumps([SETTINGS[name], configs, args.alpha]).encode()).hexdigest()[:16]
        kept = out / "results" / f"{name}.json"
        if not args.rerun and kept.is_file() and json.loads(kept.read_text()).get("key") == key:
            results[name] = json.loads(kept.read_text())
            print(f"  {name}: kept result ({kept})")
            continue
        print(f"  {name}: training with {json.dumps(SETTINGS[name])} ...", flush=True)
        try:
            result = {"key": key, **train(root, name, SETTINGS[name], test, out)}
        except (RuntimeError, IndexError) as error:  # a failed run is reported, the others go on
            print(f"  {name}: FAILED: {str(error)[-600:]}")
            continue
        kept.write_text(json.dumps(result, indent=1))
        results[name] = result
        pairs = zip(result["validation_loss"], result["curve"])
        curve = " ".join(f"{e}:{v:.3f}/{t:.3f}" for v, (e, t) in pairs)
        print(f"  {name}: {result['wall']:.0f} s; epoch: validation loss / test CE: {curve}", flush=True)
    if not results:
        return
    oracle = -np.log(chain[targets[:, 0], targets[:, 1], targets[:, 2]]).mean()
    print(f"\ncross-entropy at the last position of {len(targets):,} test windows (entropy rate {rate:.4f}):")
    print(f"  the true chain: {oracle:.4f} nats, {oracle / rate:.3f} x the entropy rate")
    for what, ce in (
        (f"the Bayes predictor of the training items (trigram counts + Dirichlet({args.alpha}))", floor),
        ("the trigram counts of the training items alone (+ 0.01)", counts_only),
    ):
        print(f"  {what}: {ce:.4f} nats, {ce / rate:.3f}")
    base = np.array(results["template"]["per_window"]) if "template" in results else None
    rows = []
    for name, r in results.items():
        epoch, lowest = min(r["curve"], key=lambda c: c[1])
        paired = "-"
        if base is not None and name != "template":  # the same test windows: the difference's mean and SE
            d = (np.array(r["per_window"]) - base) / rate
            paired = f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}"
        rows.append(
            [
                name,
                ", ".join(f"{k.removeprefix(T)}={json.dumps(v)}" for k, v in r["overrides"].items()) or "-",
                r["epochs"],
                r["best_epoch"],
                f"{min(r['validation_loss']):.4f}",
                f"{r['test_ce']:.4f}",
                f"{r['test_ce'] / rate:.3f}",
                paired,
                f"{lowest / rate:.3f} ({epoch})",
                f"{r['wall']:.0f}",
            ]
        )
    header = [
        "setting",
        "overrides",
        "epochs",
        "best epoch",
        "val loss",
        "test CE",
        "/ rate",
        "vs template",
        "lowest / rate (epoch)",
    ]
    print_table([*header, "wall s"], rows)


if __name__ == "__main__":
    main()
