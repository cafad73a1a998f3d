"""How a run stops: Ctrl-C (KeyboardInterrupt) and SIGTERM (Stopped, a time limit or `kill`) take
effect where the work can be resumed from, never in the middle of what must be done whole.

Training stops otherwise (`stop_at_boundary`): SIGTERM and SIGUSR1 (the signal a cluster sends
ahead of a time limit) are noted, and every process of the run stops at the same batch boundary
(the processes agree on it, see Trainer), saves a checkpoint and exits with RESUME_EXIT (75,
EX_TEMPFAIL: "resume me"). Ctrl-C stops a single process's training at once, with a checkpoint,
exit 130; under DDP (`interrupt_at_boundary`) it is noted like SIGTERM while the processes train,
so that all of them stop at the same batch boundary (a rank stopped on its own would leave the
others waiting in a collective), and exits 130 too.
"""

import signal
import threading
from contextlib import contextmanager

RESUME_EXIT = 75  # EX_TEMPFAIL: stopped by a time limit with a checkpoint saved; run it again to resume
BOUNDARY_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_noted: list = []  # the signals that asked training to stop at its next batch boundary


class Stopped(KeyboardInterrupt):
    """SIGTERM received: stop like Ctrl-C (save what resumes), then exit with status 143."""


class StoppedToResume(Stopped):
    """Training stopped at a batch boundary by SIGTERM or SIGUSR1, its checkpoint saved: exit 75
    (by Ctrl-C under DDP: exit 130)."""

    def __init__(self, number: int, where: str = ""):
        super().__init__(number, where)
        self.number, self.where = number, where

    def __str__(self) -> str:
        if self.number == signal.SIGINT:
            return f"interrupted{self.where}"
        return f"stopped by {signal.Signals(self.number).name}{self.where}"

    @property
    def exit_code(self) -> int:
        return 130 if self.number == signal.SIGINT else RESUME_EXIT


def _note(number, frame) -> None:
    _noted.append(number)


@contextmanager
def interrupt_at_boundary(distributed: bool):
    """Inside the block, Ctrl-C (SIGINT) of a DDP process is noted for the next batch boundary, as
    SIGTERM is; a single process (`distributed` false) keeps stopping at once."""
    if not distributed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_at_boundary() -> None:
    """SIGTERM and SIGUSR1 are noted, for training to stop at its next batch boundary (`noted`)."""
    for number in BOUNDARY_SIGNALS:
        signal.signal(number, _note)


def noted() -> int | None:
    """The first signal noted by `stop_at_boundary` (None: none)."""
    return _noted[0] if _noted else None


@contextmanager
def uninterrupted():
    """Ctrl-C or SIGTERM inside the block takes effect at its end (KeyboardInterrupt, Stopped), so
    that what it does is done whole: an optimizer step with its bookkeeping, a pool of worker
    processes started with its handle kept. A SIGTERM noted for the next batch boundary
    (`stop_at_boundary`) stays so. Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    numbers = [n for n in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(n) is not _note]
    previous = {number: signal.signal(number, lambda n, frame: received.append(n)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if signal.SIGTERM in received:
        raise Stopped
    if received:
        raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM (a time limit, `kill`) stops a stage like Ctrl-C does: it saves what resumes."""

    def stop(number, frame):
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
