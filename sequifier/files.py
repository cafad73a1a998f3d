"""Atomic writes: an interrupted run never leaves a file that looks complete."""

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` on success.

    Works for files and folders. On error the temporary is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def publish(source, target) -> None:
    """Move a finished file or folder onto `target`, replacing what was there."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    try:
        os.replace(source, target)
    except OSError:  # another file system: copy next to the target, then rename
        with atomic_path(target) as tmp:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp)
        shutil.rmtree(source) if source.is_dir() else source.unlink()
