"""Training checkpoints: everything needed to resume a run exactly.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the random
states, the position in training (epochs done, batches done in the next epoch), the best model
so far and the metrics rows written until then. Files are written atomically; the newest one
is found by its name.
"""

import random
import re
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from sequifier.errors import DataError
from sequifier.files import atomic_path

FORMAT = "sequifier-checkpoint/1"
NAME = re.compile(r"sequifier-(?P<model>.+)-epoch-(?P<epoch>\d+)(?:-batch-(?P<batch>\d+))?\.pt$")


# Keys that may change between a run and its continuation: how long and where it runs, what it
# writes and logs. Every other key must be the same, or the continuation is another experiment.
RESUMABLE = (
    "project_root", "preprocess_config_path", "metadata_config_path", "inference_batch_size", "export_",
    "models_path", "checkpoints_path", "logs_path", "wandb.", "training_spec.epochs",
    "training_spec.continue_training", "training_spec.device", "training_spec.num_workers",
    "training_spec.log_interval", "training_spec.save_interval_epochs", "training_spec.early_stopping_epochs",
    "training_spec.class_share_log_columns",
)  # fmt: skip


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and key not in ("optimizer", "scheduler", "criterion"):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, current: dict) -> list:
    """'key: saved -> current' for every setting that changes what is trained."""
    old, new = _flat(saved), _flat(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE)
    ]


def checkpoint_file(folder: Path, model_name: str, epoch: int, batches_done: int = 0) -> Path:
    batch = f"-batch-{batches_done}" if batches_done else ""
    return folder / f"sequifier-{model_name}-epoch-{epoch}{batch}.pt"


def latest(folder: Path, model_name: str) -> Path | None:
    """The checkpoint furthest into training, or None."""
    found = []
    for path in folder.glob(f"sequifier-{model_name}-epoch-*.pt") if folder.is_dir() else []:
        match = NAME.match(path.name)
        if match and match["model"] == model_name:
            found.append((int(match["epoch"]), int(match["batch"] or 0), path))
    return max(found)[2] if found else None


def remove_partial(folder: Path, model_name: str) -> None:
    """Remove the checkpoints written within an epoch (on Ctrl-C)."""
    for path in folder.glob(f"sequifier-{model_name}-epoch-*-batch-*.pt") if folder.is_dir() else []:
        match = NAME.match(path.name)
        if match and match["model"] == model_name:
            path.unlink()


@contextmanager
def uninterrupted():
    """Ctrl-C inside the block takes effect at its end, so the state a checkpoint saves is never
    half updated (an optimizer step without its bookkeeping). Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def random_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state, "random": random_states()}, tmp)


def load(path: Path) -> dict:
    """Read a checkpoint; a damaged or foreign file is an error that says what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unpickling failure means the file is unusable
        raise DataError(
            f"{path}: cannot resume from this checkpoint, the file is damaged ({type(error).__name__}: "
            f"{str(error)[:200]}); delete it to resume from an earlier one, or set "
            "training_spec.continue_training: false"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a sequifier checkpoint (expected format {FORMAT})")
    return state
