"""Files: atomic, durable writes, content hashes, and torch files loaded as plain data only.

Atomic, durable writes: an interrupted run (or a power cut) never leaves a file that looks complete.

A file or folder is written under a temporary name next to its target, flushed to disk (fsync of
every file written), renamed onto the target, and then the rename itself is flushed (fsync of the
parent folder). Where the operating system refuses an fsync (some file systems, folders on
Windows) the write goes on without it.
"""

import errno
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from sequifier.errors import LockedError, os_failure


def _temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush one file's (or folder's entries') data to disk; best effort."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if directory else os.O_RDONLY
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # not supported here (a folder on some systems, a pipe)
        pass
    finally:
        os.close(descriptor)


def sync_tree(path) -> None:
    """fsync a file, or every file and folder inside a folder (and the folder itself)."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        _fsync(path)
        return
    for folder, _, names in os.walk(path):
        for name in names:
            file = Path(folder) / name
            if not file.is_symlink():
                _fsync(file)
        _fsync(Path(folder), directory=True)


def sync_parent(path) -> None:
    """fsync the folder holding `path`, so a rename or removal in it is on disk."""
    _fsync(Path(path).absolute().parent, directory=True)


def _replace(source: Path, target: Path) -> None:
    """Rename `source` onto `target`; a folder already at `target` is moved aside first and removed
    only after the rename, so there is never a moment without either."""
    old = None
    if target.is_dir() and not target.is_symlink():
        old = _temporary_sibling(target, "old")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the old one back
        raise
    sync_parent(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success flush it to disk and rename it onto `path`.

    Works for files and folders. On error the temporary is removed and `path` is untouched; an
    OSError (a full disk, a refusal) is raised as an EnvironmentFailure that names `path`.
    """
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        sync_tree(tmp)
        _replace(tmp, path)
    except OSError as error:
        raise os_failure(error, _named(error, path), "writing") from None
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def _named(error: OSError, path: Path) -> Path:
    """The path an error is about: its own file where that is not the temporary, else `path`."""
    named = getattr(error, "filename", None)
    if named is None or Path(named).name.startswith(f".{path.name}."):
        return path
    return Path(named)


def torch_save(obj, path) -> None:
    """torch.save, a failed write raised as the OSError it is (torch reports 'unexpected pos')."""
    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as error:
        text = str(error)
        if not any(sign in text for sign in ("unexpected pos", "PytorchStreamWriter", "file write failed")):
            raise
        number = _write_refusal(Path(path))
        raise OSError(number, os.strerror(number), str(path)) from None


def _write_refusal(path: Path) -> int:
    """Why a write that the library did not explain failed: no space, a file-size limit, or I/O."""
    import resource

    try:
        if os.statvfs(path.parent).f_bavail == 0:
            return errno.ENOSPC
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    return errno.EIO


def content_hash(files: list) -> str:
    """blake2b over the bytes of files, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return f"blake2b:{digest.hexdigest()}"


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def remove(path) -> None:
    """Remove a file (if it is there) and flush the removal to disk."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    sync_parent(path)


def publish(source, target) -> None:
    """Move a finished file or folder onto `target`, replacing what was there; durable like atomic_path."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sync_tree(source)
    try:
        _replace(source, target)
    except OSError:  # another file system: copy next to the target, then rename
        if not source.exists():
            raise
        with atomic_path(target) as tmp:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp)
        shutil.rmtree(source) if source.is_dir() else source.unlink()
        sync_parent(source)


# --- locks: what a run owns, held while it runs --------------------------------------------


def lock_file(path) -> Path:
    """The lock file of a path a run owns: `.NAME.lock` next to it."""
    path = Path(path)
    return path.with_name(f".{path.name.lstrip('.')}.lock")


@contextmanager
def locked(paths: list, what: str, command: str, advice: str):
    """Hold the locks of `paths` (their lock_file) while the block runs, or raise LockedError at once
    naming the holder: 'WHAT is in use by pid N (COMMAND, started HH:MM:SS on HOST); ADVICE'.

    The locks are flock(2) locks, released by the operating system when their holder dies, so a
    killed run leaves none behind; the lock files hold the holder's pid, host, command and start."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for path in sorted({lock_file(path) for path in paths}):
            stack.enter_context(_held(path, what, command, advice))
        yield


@contextmanager
def _held(path: Path, what: str, command: str, advice: str):
    made = [folder for folder in [path.parent, *path.parent.parents] if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _descriptor_held(path, what, command, advice):
            yield
    finally:
        for folder in made:  # the folders made for the lock only go again, when left empty
            try:
                folder.rmdir()
            except OSError:
                break


@contextmanager
def _descriptor_held(path: Path, what: str, command: str, advice: str):
    import fcntl
    import socket
    import time

    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise LockedError(f"{what} is in use by {holder}; {advice}") from None
        if _is_file_at(descriptor, path):
            break
        os.close(descriptor)  # its holder removed it meanwhile: lock the one there now
    try:
        started = time.time()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": started}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, (json.dumps(holder) + "\n").encode())
        yield
    finally:
        try:
            path.unlink()  # while still held: a run that opened it meanwhile takes a new one
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _is_file_at(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(descriptor: int) -> str:
    """'pid N (COMMAND, started HH:MM:SS on HOST)' from a lock file, as far as it was written."""
    import time

    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode())
        moment = time.localtime(holder["started"])
        today = time.localtime()[:3] == moment[:3]
        when = time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", moment)
        return f"pid {holder['pid']} ({holder['command']}, started {when} on {holder['host']})"
    except (ValueError, KeyError, TypeError, OSError):  # being written: the holder is starting
        return "another run (starting)"


class UnsafeFileError(Exception):
    """A torch file that holds objects other than tensors and plain data; `names` lists their types."""

    def __init__(self, names: list):
        super().__init__(", ".join(names))
        self.names = names


def torch_load_plain(path):
    """torch.load with weights_only=True: tensors, dicts, lists, tuples, sets, str, numbers, None.

    A file that holds other objects raises UnsafeFileError (their types, as far as torch can tell
    without unpickling them); it is never unpickled, since that could run code. Any other failure
    (a damaged file, not a torch file) is raised as it comes.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names = _unsafe_globals(path)
        if names or "Unsupported global" in str(error):
            raise UnsafeFileError(names or [_named_global(str(error))]) from None
        # torch's own message suggests weights_only=False, which would be unsafe advice here
        raise pickle.UnpicklingError("damaged, or not written by torch.save") from None


def _unsafe_globals(path) -> list:
    import torch

    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.6
    if scan is None:
        return []
    try:
        return sorted(scan(path))
    except Exception:  # not a zip file: damaged, or of the legacy format
        return []


def _named_global(message: str) -> str:
    marker = "Unsupported global: GLOBAL "
    start = message.find(marker)
    return message[start + len(marker) :].split()[0] if start >= 0 else "unknown objects"
