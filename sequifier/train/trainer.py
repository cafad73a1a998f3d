"""The training loop of `sequifier train`: `Trainer.fit` runs the epochs (train, validate and record,
keep the best model, checkpoint, stop early); an epoch is a micro-step per batch, an optimizer step
at the end of each accumulation group, then a validation when log_interval is due. Under torchrun
the model is wrapped in DistributedDataParallel and only rank 0 writes anything.
"""

import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from sequifier.data.window_files import PAD
from sequifier.errors import ConfigError
from sequifier.interrupts import Stopped, StoppedToResume, interrupt_at_boundary, uninterrupted
from sequifier.model.export import load_weights
from sequifier.model.network import Transformer
from sequifier.train import checkpoint, distributed, nonfinite
from sequifier.train.boundaries import Boundaries
from sequifier.train.datasets import open_windows
from sequifier.train.evaluation import Evaluator, add, means, weighted_total
from sequifier.train.masking import make_objective
from sequifier.train.metrics import (
    baseline_rows,
    metric_columns,
    model_row,
    report_baselines,
    report_row,
    write_metrics,
)
from sequifier.train.optim import build_optimizer
from sequifier.train.plan import TrainPlan
from sequifier.train.progress import EpochRun, Progress
from sequifier.train.schedules import RunLength, build_schedule
from sequifier.train.tracking import Tracker
from sequifier.train.transfer import freeze

log = logging.getLogger(__name__)
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Trains a plan's model in one process of a run; `progress` is where it stands."""

    def __init__(self, plan: TrainPlan, process: distributed.Process):
        self.plan, self.process, self.config = plan, process, plan.config
        self.spec = spec = plan.config["training_spec"]
        self.device = process.device
        torch.manual_seed(self.config["seed"])
        self.model = Transformer(plan.model_args()).to(self.device)
        freeze(self.model, spec["freeze"])  # before the optimizer: it holds what trains
        self.autocast = AUTOCAST.get(spec["mixed_precision"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=spec["mixed_precision"] == "fp16")
        length = plan.config["model_spec"]["prediction_length"]
        self.objective = make_objective(self.config, self.model.args, length, self.device)
        in_ram, buffer, readahead = (
            spec["load_full_data_to_ram"],
            spec["shuffle_buffer_size"],
            spec["num_workers"],
        )
        self.train_data = open_windows(plan.window_source(plan.train_path), in_ram, buffer, readahead)
        self.validation_data = open_windows(
            plan.window_source(plan.validation_path), in_ram, buffer, readahead
        )
        if in_ram:
            self.train_data.to(self.device)
            self.validation_data.to(self.device)
        self.batches_per_epoch = self.train_data.batch_count(  # of this process
            spec["batch_size"], shuffle=True, rank=process.rank, world=process.world
        )
        length = RunLength(spec["epochs"], math.ceil(self.batches_per_epoch / spec["accumulation_steps"]))
        try:
            self.optimizer = build_optimizer(self.model, spec["optimizer"], spec["learning_rate"])
            self.schedule = build_schedule(
                self.optimizer, spec["scheduler"], spec["scheduler_step_on"], length
            )
        except ConfigError as error:
            raise ConfigError(f"{plan.source}: {error}") from None
        self.progress = Progress()
        self.boundaries, self.saved_at = Boundaries(process, self.device, spec["save_interval_minutes"]), None
        self.wandb_id = None  # the W&B run, continued on resume
        self.validation_seconds = 0.0
        classes = plan.metadata.n_classes
        self.evaluator = Evaluator(
            self.validation_data, self.objective, self.config, classes, process, self.device
        )
        self.columns = metric_columns(plan.config["target_columns"], self.evaluator.categorical)
        self.network = torch.compile(self.model) if spec["compile"] else self.model
        if process.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=ids)

    # -- resume and checkpoints ------------------------------------------------------------------

    def resume(self, path: Path) -> None:
        state = checkpoint.load(path)
        changed = checkpoint.differences(state, self.config)
        if state.get("metadata") != self.plan.metadata.to_dict():
            changed.append(f"the metadata ({self.plan.metadata_path}) is not the one trained with")
        if state["progress"]["batches_done"] and state.get("world") != self.process.world:
            changed.append(f"processes: {state['world']} -> {self.process.world} in the middle of an epoch")
        if changed:
            raise ConfigError(
                f"{self.plan.source}: cannot resume from {path}, it was trained otherwise: "
                f"{'; '.join(changed)}; set training_spec.continue_training: false to start anew, "
                "or use another model_name"
            )
        load_weights(self.model, state["model"], path, "train anew (training_spec.continue_training: false)")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        if len(self.progress.rank_train_sums) == self.process.world:  # saved where all ranks agreed
            self.progress.train_sums = self.progress.rank_train_sums[self.process.rank]
        self.wandb_id = state.get("wandb_id")
        if self.progress.batches_done:
            checkpoint.restore_random_states(state["random"])
        log.info("resuming from %s (epoch %d done)", path, self.progress.epoch)

    def save_checkpoint(self, agreed: bool = False) -> None:
        """Everything to resume from, the time trained until now included; written by rank 0, which
        then prunes the oldest (keep_checkpoints). Once per place in training. Where all processes
        `agreed` to save (a batch boundary), the loss sums of each process's epoch are saved too."""
        p, now = self.progress, time.perf_counter()
        if self.saved_at == (p.epoch, p.batches_done, p.steps, p.pending_record):
            return
        p.rank_train_sums = (
            distributed.gathered(self.process, p.train_sums) if agreed and p.batches_done else []
        )
        p.elapsed, self.started = p.elapsed + now - self.started, now
        self.saved_at = (p.epoch, p.batches_done, p.steps, p.pending_record)
        self.boundaries.saved_now()
        if not self.process.main:
            return
        path = checkpoint.checkpoint_file(self.plan.checkpoints, self.plan.name, p.epoch, p.batches_done)
        state = {"model_args": self.model.args.to_dict(), "config": self.config, "world": self.process.world}
        state |= {"metadata": self.plan.metadata.to_dict(), "wandb_id": self.wandb_id, "progress": vars(p)}
        state |= {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        scheduler = self.schedule.state_dict() if self.schedule is not None else None
        state |= {"scheduler": scheduler, "scaler": self.scaler.state_dict()}
        checkpoint.save(path, state, supersedes_partial=p.batches_done == 0)  # an epoch's end: the partial go
        checkpoint.prune(self.plan.checkpoints, self.plan.name, self.spec["keep_checkpoints"])

    def at_boundary(self, epoch: int) -> None:
        """Between optimizer steps, all processes alike: stop when a signal asked to (StoppedToResume,
        the checkpoint saved on the way out), or save a checkpoint when save_interval_minutes are up."""
        if self.boundaries.check(f" at epoch {epoch} batch {self.progress.batches_done}"):
            self.save_checkpoint(agreed=True)

    # -- the epoch: micro-steps, optimizer steps, interval validations --------------------------

    def train_epoch(self, epoch: int, tracker: Tracker) -> tuple:
        """Train on the epoch's batches from where the progress stands: a micro-step per batch, an
        optimizer step at the end of each accumulation group, then a validation when log_interval is
        due. Returns the train losses and the windows per second (all processes, without validation)."""
        run, group_sums = self._start_epoch(epoch, tracker), {}
        for i, batch in enumerate(self._batches(run), start=self.progress.batches_done):
            group = self._group(i, run.batches)
            if i == group.start:
                torch.manual_seed(seed := self._group_seed(epoch, group.start))
                self.objective.reseed(seed)  # the masks of a masked objective
                group_sums = {}
            add(group_sums, self._micro_step(batch, len(group), last=i == group[-1]))
            run.windows += len(batch[PAD])
            if i == group[-1]:
                due = self._interval_due(group, run.batches)
                self._optimizer_step(run, group, group_sums, record_due=due)
                if due:
                    self._record_interval(run, self._windows_per_second(run), tracker)
                self.at_boundary(epoch)
        return self._reduce(run.sums), self._windows_per_second(run)

    def _start_epoch(self, epoch: int, tracker: Tracker) -> EpochRun:
        """The epoch from where the progress stands, after the interval validation that an
        interruption cut short (if any); the model in training mode and the throughput clock started."""
        p = self.progress
        if p.batches_done == 0:
            p.train_sums = {}
        run = EpochRun(epoch, self.batches_per_epoch, {k: v.to(self.device) for k, v in p.train_sums.items()})
        if p.pending_record:  # interrupted while validating there: validate first
            self._record_interval(run, math.nan, tracker)
        self.network.train()
        run.started, run.validation_seconds = time.perf_counter(), self.validation_seconds
        return run

    def _batches(self, run: EpochRun):
        """This process's share of the epoch's shuffled batches, those done skipped, behind a
        progress bar (on rank 0 at a terminal)."""
        batches = self.train_data.batches(
            self.spec["batch_size"], shuffle=True, seed=self.config["seed"], epoch=run.number,
            rank=self.process.rank, world=self.process.world, skip=self.progress.batches_done,
        )  # fmt: skip
        quiet = not (self.process.main and sys.stderr.isatty())
        return tqdm(
            batches, desc=f"epoch {run.number}", unit="batch", leave=False, disable=quiet, total=run.batches
        )

    def _group(self, batch: int, batches: int) -> range:
        """The batches of `batch`'s optimizer step (the last group of an epoch may be smaller)."""
        first = batch - batch % self.spec["accumulation_steps"]
        return range(first, min(first + self.spec["accumulation_steps"], batches))

    def _group_seed(self, epoch: int, first_batch: int) -> int:
        """Dropout is seeded per optimizer step, so a resumed run draws what an uninterrupted one would."""
        return hash((self.config["seed"], epoch, first_batch, self.process.rank)) & 0x7FFF_FFFF_FFFF_FFFF

    def _micro_step(self, batch: dict, group_size: int, last: bool) -> dict:
        """Forward, losses and the scaled backward of one batch of a group of `group_size`; under DDP
        the gradients are synchronized with the group's `last` batch only. Returns the losses."""
        no_sync = self.network.no_sync() if self.process.distributed and not last else nullcontext()
        with no_sync:
            with self._autocast():
                outputs = self.network(
                    self.objective.inputs(batch, self.config["input_columns"], self.device)
                )
            losses = self.objective.losses(outputs, batch)
            self.scaler.scale(self.objective.total(losses) / group_size).backward()
        return losses

    def _optimizer_step(self, run: EpochRun, group: range, group_sums: dict, record_due: bool) -> None:
        """Apply the group's gradients and note the progress, all or nothing (Ctrl-C waits for both);
        an interval validation due after the step is marked pending in the same breath, so that a
        resumed run does not skip it. A step whose loss or gradient is not finite is skipped: too
        many of them in a row stop training (nonfinite.py)."""
        with uninterrupted():
            applied, grad_norm = self._apply_gradients(group_sums)
            if applied:
                add(run.sums, group_sums)
                self.progress.step_done(group.stop, run.sums)
            else:
                self.progress.step_skipped(group.stop)
            if record_due:
                self.progress.pending_record = group.stop
        limit, count = self.spec["max_nonfinite_steps"], self.progress.nonfinite_steps
        if count > limit:
            latest = checkpoint.latest(self.plan.checkpoints, self.plan.name)
            raise nonfinite.stop_error(
                self.plan.source, run.number, group, group_sums, grad_norm, count, limit, latest
            )
        if count and not applied and self.process.main:
            log.warning(
                "epoch %d batch %d: the loss or its gradient is not finite; step skipped (%d in a row, "
                "training_spec.max_nonfinite_steps: %d)", run.number, group.stop, count, limit,
            )  # fmt: skip

    def _apply_gradients(self, group_sums: dict) -> tuple:
        """Unscale and clip the gradients (by gradient_clip, if set); when the group's losses and the
        gradient norm are finite on every process, step the optimizer, the gradient scaler and the
        scheduler. Clears the gradients; returns (whether the step was applied, the norm checked:
        None with fp16, whose scaler itself skips the steps of non-finite gradients)."""
        self.scaler.unscale_(self.optimizer)
        clip = self.spec["gradient_clip"] or math.inf  # inf: the norm only
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        fp16 = self.scaler.is_enabled()
        grad_norm = None if fp16 else grad_norm
        applied = nonfinite.finite_step(self.process, group_sums, grad_norm)
        if applied:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif fp16:
            self.scaler.update(self.scaler.get_scale())  # forget the gradients unscaled for this step
        self.optimizer.zero_grad(set_to_none=True)
        if applied and self.schedule is not None:
            self.schedule.after_step()
        return applied, grad_norm

    def _interval_due(self, group: range, batches: int) -> bool:
        """Whether the group passed a multiple of log_interval before the epoch's end (its own row)."""
        interval = self.spec["log_interval"]
        return bool(interval) and group.stop // interval > group.start // interval and group.stop < batches

    def _record_interval(self, run: EpochRun, rate: float, tracker: Tracker) -> None:
        """Validate and record at the batches done, marked pending meanwhile (an interruption
        validates again on resume); then back to training mode."""
        p = self.progress
        p.pending_record = p.batches_done
        self.record(run.number, p.batches_done, "interval", self._reduce(run.sums), rate, tracker)
        p.pending_record = 0
        self.network.train()

    def _windows_per_second(self, run: EpochRun) -> float:
        """The epoch's windows per second on all processes since it (re)started, without validation."""
        seconds = time.perf_counter() - run.started - (self.validation_seconds - run.validation_seconds)
        return run.windows * self.process.world / seconds if run.windows else math.nan

    def _reduce(self, sums: dict) -> tuple:
        """(total, {target: loss}) from per-target (loss sum, normalizer), summed over the processes."""
        per_target = means(self.process, sums, self.config["target_columns"], self.device)
        return weighted_total(self.spec["loss_weights"], per_target), per_target

    def _autocast(self):
        """The mixed-precision context of forward passes (none at full precision)."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    # -- validation and records -----------------------------------------------------------------

    def validate(self) -> dict:
        """The model on the whole validation split (see sequifier.train.evaluation)."""
        started = time.perf_counter()
        found = self.evaluator.model(self.model, self._autocast)
        self.validation_seconds += time.perf_counter() - started
        return found

    def record(self, epoch: int, batch: int, kind: str, train: tuple, rate: float, tracker: Tracker) -> float:
        """Validate, then write a metrics row (CSV, W&B, log); returns the validation loss."""
        validation = self.validate()
        row = model_row(epoch, batch, kind, train, validation)
        elapsed = self.progress.elapsed + time.perf_counter() - self.started
        row.update(learning_rate=self.optimizer.param_groups[0]["lr"], windows_per_s=rate, elapsed_s=elapsed)
        self.progress.keep_row(row)
        if self.process.main:
            write_metrics(self.plan.metrics_path, self.columns, self.progress.rows)
            report_row(row, validation, self.plan.metadata.id_maps, tracker, self.progress.steps)
        return validation["loss"]

    def record_start(self, tracker: Tracker) -> None:
        """Before the first optimizer step: the baselines of the validation split and the
        untrained model (epoch 0), so that a curve starts where training starts."""
        p = self.progress
        if p.epoch or p.batches_done or any(row["epoch"] == 0 for row in p.rows):
            return
        baselines = self.evaluator.baselines(self.plan.metadata)
        p.rows.extend(baseline_rows(baselines))
        if self.process.main:
            report_baselines(baselines, tracker)
        untrained = (math.nan, {n: math.nan for n in self.config["target_columns"]})
        self.record(0, 0, "epoch", untrained, math.nan, tracker)

    # -- the epochs -----------------------------------------------------------------------------

    def fit(self, tracker: Tracker) -> None:
        """Record the start, then per epoch: train, validate and record, note the best model, save a
        checkpoint when due; stop early when the validation loss stalls. Ctrl-C saves a checkpoint to
        resume from, then goes on up."""
        p, spec = self.progress, self.spec
        self.started = time.perf_counter()
        self.record_start(tracker)
        try:
            with interrupt_at_boundary(self.process.distributed):  # Ctrl-C under DDP
                for epoch in range(p.epoch + 1, spec["epochs"] + 1):
                    train, rate = self.train_epoch(epoch, tracker)
                    validation_loss = self.record(epoch, 0, "epoch", train, rate, tracker)
                    with uninterrupted():  # the epoch's end, all or nothing
                        p.epoch_done(epoch, validation_loss, self.model)
                        if self.schedule is not None:
                            self.schedule.after_epoch()
                    stop = p.stalled(spec["early_stopping_epochs"])
                    if stop or epoch % spec["save_interval_epochs"] == 0 or epoch == spec["epochs"]:
                        self.save_checkpoint()
                    if stop:
                        log.info("early stopping: no better validation loss for %d epochs", p.stale_epochs)
                        break
                    if epoch < spec["epochs"]:
                        self.at_boundary(epoch + 1)
        except KeyboardInterrupt as stop:
            how = (str(stop) or "stopped by SIGTERM") if isinstance(stop, Stopped) else "interrupted"
            log.warning("%s: saving a checkpoint to resume from (continue_training: true)", how)
            self.save_checkpoint(agreed=isinstance(stop, StoppedToResume))
            raise
        if p.best_state is None:  # no finite validation loss: the best model is the last one
            p.best_epoch, p.best_loss = p.epoch, math.nan
        tracker.summary({"best_epoch": p.best_epoch, "best_validation_loss": p.best_loss, "epochs": p.epoch})
