"""Training checkpoints: everything needed to resume a run exactly.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the random
states, the position in training (epochs done, batches done in the next epoch), the best model
so far and the metrics rows written until then: tensors and plain data only, so a checkpoint is
read with torch.load(weights_only=True) and never runs code. Files are written atomically and
durably; the newest one is found by its name.
"""

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from sequifier.errors import DataError, first_line
from sequifier.files import UnsafeFileError, atomic_path, remove, torch_load_plain, torch_save

log = logging.getLogger(__name__)
FORMAT = "sequifier-checkpoint/1"
NAME = re.compile(r"sequifier-(?P<model>.+)-epoch-(?P<epoch>\d+)(?:-batch-(?P<batch>\d+))?\.pt$")


# Keys that may change between a run and its continuation: how long and where it runs, what it
# writes and logs. Every other key must be the same, or the continuation is another experiment.
RESUMABLE = (
    "project_root", "preprocess_config_path", "metadata_config_path", "inference_batch_size", "export_",
    "models_path", "checkpoints_path", "logs_path", "wandb.", "training_spec.epochs",
    "training_spec.continue_training", "training_spec.device", "training_spec.num_workers",
    "training_spec.log_interval", "training_spec.save_interval_epochs", "training_spec.early_stopping_epochs",
    "training_spec.class_share_log_columns", "training_spec.max_nonfinite_steps",
    "training_spec.save_interval_minutes", "training_spec.keep_checkpoints",
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


def differences(state: dict, current: dict) -> list:
    """Why a checkpoint does not continue the run `current` configures: the settings that change
    what is trained, and a run planned for fewer epochs than the checkpoint has done."""
    changed = config_differences(state["config"], current)
    done, planned = state["progress"]["epoch"], current["training_spec"]["epochs"]
    if done > planned:
        before = state["config"]["training_spec"]["epochs"]
        changed.append(
            f"training_spec.epochs: {planned} is fewer than the {done} epoch(s) done of the {before} planned"
        )
    return changed


def checkpoint_file(folder: Path, model_name: str, epoch: int, batches_done: int = 0) -> Path:
    batch = f"-batch-{batches_done}" if batches_done else ""
    return folder / f"sequifier-{model_name}-epoch-{epoch}{batch}.pt"


def _checkpoints(folder: Path, model_name: str) -> list:
    """(epoch, batches done, path) of every checkpoint of the model name in the folder, in order."""
    found = []
    for path in folder.glob(f"sequifier-{model_name}-epoch-*.pt") if folder.is_dir() else []:
        match = NAME.match(path.name)
        if match and match["model"] == model_name:
            found.append((int(match["epoch"]), int(match["batch"] or 0), path))
    return sorted(found)


def latest(folder: Path, model_name: str) -> Path | None:
    """The checkpoint furthest into training, or None."""
    found = _checkpoints(folder, model_name)
    return found[-1][2] if found else None


def partial_checkpoints(folder: Path, model_name: str) -> list:
    """The checkpoints written within an epoch (on Ctrl-C or every so many batches)."""
    return sorted(path for _, batches, path in _checkpoints(folder, model_name) if batches)


def start_anew(folder: Path, model_name: str) -> None:
    """A fresh run (continue_training: false): the checkpoints of an earlier run of the model name
    go, so that a later continue_training resumes this run only."""
    earlier = [path for _, _, path in _checkpoints(folder, model_name)]
    for path in earlier:
        remove(path)
    if earlier:
        log.info(
            "removed %d checkpoint(s) of an earlier run of %s from %s (continue_training: false)",
            len(earlier), model_name, folder,
        )  # fmt: skip


def remove_partial(folder: Path, model_name: str, keep=()) -> None:
    """Remove the checkpoints written within an epoch, but those in `keep`."""
    kept = {Path(path) for path in keep}
    for path in partial_checkpoints(folder, model_name):
        if path not in kept:
            remove(path)


def prune(folder: Path, model_name: str, keep: int | None) -> None:
    """Keep the `keep` checkpoints of the model name furthest into training (None: all). The
    newest, the one a resume needs, is always kept; the best model so far is in each of them."""
    found = _checkpoints(folder, model_name)
    for _, _, path in found[: -max(1, keep)] if keep is not None else []:
        remove(path)


def random_states() -> dict:
    """The random states as tensors and plain data (numpy's as its parts, its key as a tensor)."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    saved = states["numpy"]
    key = saved["key"].numpy().astype(np.uint32)
    np.random.set_state((saved["kind"], key, saved["position"], saved["has_gauss"], saved["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, state: dict, supersedes_partial: bool = False) -> None:
    """Write a checkpoint atomically. With `supersedes_partial` (an epoch's end), the checkpoints
    written within epochs of the same model are removed, after this one is on disk, so an
    interruption at any point leaves a checkpoint to resume from."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch_save({"format": FORMAT, **state, "random": random_states()}, tmp)
    if supersedes_partial:
        match = NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path} is not named like a checkpoint (checkpoint_file)")
        remove_partial(path.parent, match["model"], keep=[path])


def load(path: Path) -> dict:
    """Read a checkpoint safely (tensors and plain data only); a damaged or foreign file, or one
    holding other objects, is an error that says what to do."""
    try:
        state = torch_load_plain(path)
    except UnsafeFileError as error:
        raise DataError(
            f"{path}: cannot resume from this checkpoint, it holds objects other than tensors and plain "
            f"data ({', '.join(error.names)}); it is not loaded, since unpickling them could run code "
            "(sequifier writes checkpoints of tensors, numbers, strings, lists and dicts only); delete "
            "it to resume from an earlier one, or set training_spec.continue_training: false"
        ) from None
    except Exception as error:  # any other failure means the file is unusable
        raise DataError(
            f"{path}: cannot resume from this checkpoint, the file is damaged ({type(error).__name__}: "
            f"{first_line(error)}); delete it to resume from an earlier one, or "
            "set training_spec.continue_training: false"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a sequifier checkpoint (expected format {FORMAT})")
    return state
