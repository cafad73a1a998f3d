"""What training does between two optimizer steps, where every process of a run stands at the same
place: stop when a signal asked it to (SIGTERM, SIGUSR1: a time limit ahead, see
sequifier.interrupts), and save a checkpoint when save_interval_minutes have passed since the last.
The processes agree on both (the flags of all ranks reduced), so that all stop or save at the same
step and none is left waiting in a collective of a step the others do not take."""

import signal
import time

import torch

from sequifier.interrupts import StoppedToResume, noted
from sequifier.train import distributed


class Boundaries:
    """The clock of the time-based checkpoints and the check made at each batch boundary."""

    def __init__(self, process: distributed.Process, device: torch.device, minutes: float | None):
        self.process, self.device = process, device
        self.seconds = None if minutes is None else minutes * 60
        self.saved = time.monotonic()

    def saved_now(self) -> None:
        self.saved = time.monotonic()

    def check(self, where: str) -> bool:
        """Raise StoppedToResume when a process noted a stop signal; else whether a checkpoint is
        due by the clock (on any process). `where`: the place, for the message."""
        due = self.seconds is not None and time.monotonic() - self.saved >= self.seconds
        stop, save = distributed.agreed(self.process, [noted() is not None, due], self.device)
        if stop:
            raise StoppedToResume(noted() or signal.SIGTERM, where)
        return save
