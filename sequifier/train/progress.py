"""Where training stands: the `Progress` that every checkpoint saves (as `vars(progress)`) and a
resumed run continues from, and the running figures of the epoch under way (`EpochRun`)."""

import math
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs done
    batches_done: int = 0  # batches done of epoch + 1 (after an interrupt)
    steps: int = 0  # optimizer steps
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    stale_epochs: int = 0
    pending_record: int = 0  # the batch whose interval validation was interrupted
    nonfinite_steps: int = 0  # optimizer steps skipped in a row, their loss or gradient not finite
    elapsed: float = 0.0
    train_sums: dict = field(default_factory=dict)  # of the epoch under way
    rank_train_sums: list = field(default_factory=list)  # every process's, where they agreed to save
    rows: list = field(default_factory=list)

    def step_done(self, batches_done: int, train_sums: dict) -> None:
        """One more optimizer step: the epoch's batches done so far and their loss sums."""
        self.steps, self.batches_done, self.train_sums = self.steps + 1, batches_done, dict(train_sums)
        self.nonfinite_steps = 0

    def step_skipped(self, batches_done: int) -> None:
        """An optimizer step skipped, its loss or gradient not finite: its batches done, not counted."""
        self.batches_done, self.nonfinite_steps = batches_done, self.nonfinite_steps + 1

    def epoch_done(self, epoch: int, validation_loss: float, model) -> None:
        """The epoch done: its model the best so far, or one more epoch without a better loss."""
        self.epoch, self.batches_done = epoch, 0
        if validation_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stale_epochs = validation_loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.stale_epochs += 1

    def keep_row(self, row: dict) -> None:
        """Add a metrics row, in place of one of its epoch, batch and kind (validated again on resume)."""
        same = (row["epoch"], row["batch"], row["kind"])
        self.rows = [r for r in self.rows if (r["epoch"], r["batch"], r["kind"]) != same] + [row]

    def stalled(self, patience: int | None) -> bool:
        """Whether to stop early: `patience` epochs (None: never) without a better validation loss."""
        return patience is not None and self.stale_epochs >= patience


@dataclass
class EpochRun:
    """An epoch under way on this process: the loss sums of its batches done (those before a resume
    too), and for its throughput the windows trained on since it (re)started, when that was and how
    many seconds the trainer had spent validating by then."""

    number: int
    batches: int  # this process's batches of the epoch
    sums: dict
    windows: int = 0
    started: float = 0.0
    validation_seconds: float = 0.0
