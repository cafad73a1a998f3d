"""The errors sequifier raises for a user to read: a message, never a traceback.

Exit codes of the CLI: 2 for bad input (SequifierError: ConfigError, DataError), 74 when the
machine or another process says no (EnvironmentFailure: a file system refusal, out of memory, a
lock held), 130 for Ctrl-C and 143 for SIGTERM (interrupts.Stopped); training stopped by SIGTERM
or SIGUSR1 saves a checkpoint at the next batch boundary and exits 75 (EX_TEMPFAIL, "resume me":
interrupts.StoppedToResume).
"""

import errno as codes
import os
import re

# The file where the CLI leaves a bad-input error (exit 2) for a training run's lifecycle.
VERDICT_ENV = "SEQUIFIER_VERDICT"


class SequifierError(Exception):
    """Bad input from the user; the CLI prints the message and exits with status 2."""

    exit_code = 2


class ConfigError(SequifierError):
    """A config file or a command-line override is invalid."""


class DataError(SequifierError):
    """An input table (or a file derived from it) is invalid."""


class NumericError(SequifierError):
    """Numbers that stopped being numbers: a training loss, or a model's outputs, not finite."""


class EnvironmentFailure(SequifierError):
    """The machine or another process says no: a file system refusal (`errno`), out of memory, a
    lock held. Nothing is wrong with the input; the CLI exits with status 74."""

    exit_code = 74
    errno = None


class ResourceError(EnvironmentFailure):
    """The machine ran out of something (memory, a worker process); the work can be resumed."""


class LockedError(EnvironmentFailure):
    """Another run holds the lock on what this run would write."""


SPACE = (codes.ENOSPC, codes.EDQUOT, codes.EFBIG)  # a write ran out of room
ADVICE = {
    codes.ENOSPC: "free space on that disk, or write the outputs to another disk",
    codes.EDQUOT: "free space within your disk quota, or write the outputs to another disk",
    codes.EFBIG: "a file-size limit (ulimit -f) stops it; raise the limit, or write smaller files",
    codes.EACCES: "check the permissions of that path, or write elsewhere",
    codes.EPERM: "check the permissions of that path, or write elsewhere",
    codes.EROFS: "the file system is read-only; write elsewhere",
    codes.ENOTDIR: "a file is in the way where a folder is needed; move it, or choose another path",
    codes.EEXIST: "a file or folder is in the way; move it, or choose another path",
    codes.EISDIR: "a folder is in the way where a file is needed; move it, or choose another path",
    codes.ENOENT: "it is not there (removed while running?); check the path",
    codes.EMFILE: "too many files open; raise the limit (ulimit -n)",
    codes.ENFILE: "too many files open on the machine; retry later",
    codes.ENOMEM: "out of memory; give it more, or use less (fewer processes, smaller batches)",
    codes.EIO: "the device reports an input/output error; check the disk",
}


def error_number(error: BaseException) -> int | None:
    """The errno of an OSError, also where a library put it into the message only ('[errno 28]')."""
    number = getattr(error, "errno", None)
    if isinstance(number, int):
        return number
    found = re.search(r"\[errno (\d+)\]", str(error), re.IGNORECASE)
    return int(found[1]) if found else None


def os_failure(error: OSError, path=None, action: str = "") -> EnvironmentFailure:
    """An OSError as one line for a user: the path, what failed, why, and what to do.

    `path` names the file when the error does not (or names only a temporary file standing in
    for it); `action` is what was done to it ('writing')."""
    number = error_number(error)
    reason = os.strerror(number) if number is not None else (getattr(error, "strerror", None) or "")
    reason = reason or first_line(error) or type(error).__name__
    name = path if path is not None else getattr(error, "filename", None)
    other = getattr(error, "filename2", None) if path is None else None
    where = f"{name} -> {other}" if other else str(name) if name is not None else "(a file)"
    doing = f"{action} failed: " if action else ""
    advice = ADVICE.get(number, "check the path and the machine")
    failure = EnvironmentFailure(f"{where}: {doing}{reason}; {advice}")
    failure.errno = number
    return failure


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (at most `limit` characters), to quote in one of ours."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else "")[:limit]
