"""`sequifier train`: metadata + windows -> a trained model, its checkpoints, metrics and exports.

Reads top to bottom: set up (plan, process, data, model, optimizer), then `Trainer.fit` runs the
epochs (train, validate, record, checkpoint), then the best and last models are exported. Under
torchrun the model is wrapped in DistributedDataParallel and only rank 0 writes anything.
"""

import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from sequifier.data.window_files import PAD
from sequifier.errors import ConfigError
from sequifier.model.network import Transformer
from sequifier.train import checkpoint, distributed
from sequifier.train.datasets import open_windows
from sequifier.train.evaluation import Evaluator, add, means, weighted_total
from sequifier.train.metrics import (
    baseline_rows,
    class_shares,
    metric_columns,
    model_row,
    tracked,
    write_metrics,
)
from sequifier.train.objective import Objective, model_inputs
from sequifier.train.optim import build_optimizer
from sequifier.train.plan import TrainPlan
from sequifier.train.schedules import RunLength, build_schedule
from sequifier.train.tracking import Tracker

log = logging.getLogger(__name__)
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    elapsed: float = 0.0
    train_sums: dict = field(default_factory=dict)  # of the epoch under way
    rows: list = field(default_factory=list)


class Trainer:
    def __init__(self, plan: TrainPlan, process: distributed.Process):
        self.plan, self.process, self.config = plan, process, plan.config
        self.spec = spec = plan.config["training_spec"]
        self.device = process.device
        torch.manual_seed(self.config["seed"])
        self.model = Transformer(plan.model_args()).to(self.device)
        self.autocast = AUTOCAST.get(spec["mixed_precision"])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=spec["mixed_precision"] == "fp16")
        self.objective = Objective(
            plan.model_args(), spec, plan.config["model_spec"]["prediction_length"], self.device
        )
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
        batches = self.train_data.batch_count(
            spec["batch_size"], shuffle=True, rank=process.rank, world=process.world
        )
        length = RunLength(spec["epochs"], math.ceil(batches / spec["accumulation_steps"]))
        try:
            self.optimizer = build_optimizer(self.model, spec["optimizer"], spec["learning_rate"])
            self.schedule = build_schedule(
                self.optimizer, spec["scheduler"], spec["scheduler_step_on"], length
            )
        except ConfigError as error:
            raise ConfigError(f"{plan.source}: {error}") from None
        self.progress = Progress()
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
        changed = checkpoint.config_differences(state["config"], self.config)
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
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.wandb_id = state.get("wandb_id")
        if self.progress.batches_done:
            checkpoint.restore_random_states(state["random"])
        log.info("resuming from %s (epoch %d done)", path, self.progress.epoch)

    def save_checkpoint(self) -> None:
        if not self.process.main:
            return
        p = self.progress
        path = checkpoint.checkpoint_file(self.plan.checkpoints, self.plan.name, p.epoch, p.batches_done)
        checkpoint.save(
            path,
            {
                "model_args": self.model.args.to_dict(),
                "config": self.config,
                "metadata": self.plan.metadata.to_dict(),
                "world": self.process.world,
                "wandb_id": self.wandb_id,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict() if self.schedule is not None else None,
                "scaler": self.scaler.state_dict(),
                "progress": vars(p),
            },
            supersedes_partial=p.batches_done == 0,  # an epoch's end: the checkpoints within it go, after
        )

    # -- one batch, one epoch, validation ---------------------------------------------------------

    def _autocast(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _step(self) -> None:
        if self.spec["gradient_clip"] is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec["gradient_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.steps += 1
        if self.schedule is not None:
            self.schedule.after_step()

    def _group_seed(self, epoch: int, first_batch: int) -> int:
        """Dropout is seeded per optimizer step, so a resumed run draws what an uninterrupted one would."""
        return hash((self.config["seed"], epoch, first_batch, self.process.rank)) & 0x7FFF_FFFF_FFFF_FFFF

    def train_epoch(self, epoch: int, tracker: Tracker) -> tuple:
        """Train on the epoch's batches from where the progress stands; returns the train losses and
        the windows per second (all processes, without validation time)."""
        p, spec, accumulate = self.progress, self.spec, self.spec["accumulation_steps"]
        rank, world = self.process.rank, self.process.world
        if p.batches_done == 0:
            p.train_sums = {}
        sums = {k: v.to(self.device) for k, v in p.train_sums.items()}
        if p.pending_record:  # interrupted while validating at that batch: validate first
            self.record(epoch, p.pending_record, "interval", self._reduce(sums), math.nan, tracker)
            p.pending_record = 0
        total = self.train_data.batch_count(spec["batch_size"], shuffle=True, rank=rank, world=world)
        batches = self.train_data.batches(
            spec["batch_size"], shuffle=True, seed=self.config["seed"], epoch=epoch, rank=rank, world=world,
            skip=p.batches_done,
        )  # fmt: skip
        quiet = not (self.process.main and sys.stderr.isatty())
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=quiet, total=total)
        self.network.train()
        started, validating, windows = time.perf_counter(), self.validation_seconds, 0
        for i, batch in enumerate(bar, start=p.batches_done):
            first = i - i % accumulate
            group = min(accumulate, total - first)  # the last group of an epoch may be smaller
            if i == first:
                torch.manual_seed(self._group_seed(epoch, first))
            sync = i == first + group - 1
            no_sync = self.network.no_sync() if self.process.distributed and not sync else nullcontext()
            with no_sync:
                with self._autocast():
                    outputs = self.network(model_inputs(batch, self.config["input_columns"], self.device))
                losses = self.objective.losses(outputs, batch)
                self.scaler.scale(self.objective.total(losses) / group).backward()
            add(sums, losses)
            windows += len(batch[PAD])
            if not sync:
                continue
            with checkpoint.uninterrupted():
                self._step()
                before, p.batches_done, p.train_sums = p.batches_done, i + 1, dict(sums)
            interval = spec["log_interval"]
            if interval and (i + 1) // interval > before // interval and i + 1 < total:
                seconds = time.perf_counter() - started - (self.validation_seconds - validating)
                p.pending_record = i + 1
                self.record(epoch, i + 1, "interval", self._reduce(sums), windows * world / seconds, tracker)
                p.pending_record = 0
                self.network.train()
        seconds = time.perf_counter() - started - (self.validation_seconds - validating)
        return self._reduce(sums), (windows * world / seconds if windows else math.nan)

    def _reduce(self, sums: dict) -> tuple:
        """(total, {target: loss}) from per-target (loss sum, normalizer), summed over the processes."""
        per_target = means(self.process, sums, self.config["target_columns"], self.device)
        return weighted_total(self.spec["loss_weights"], per_target), per_target

    def validate(self) -> dict:
        """The model on the whole validation split (see sequifier.evaluation)."""
        started = time.perf_counter()
        found = self.evaluator.model(self.model, self._autocast)
        self.validation_seconds += time.perf_counter() - started
        return found

    # -- records --------------------------------------------------------------------------------

    def record(self, epoch: int, batch: int, kind: str, train: tuple, rate: float, tracker: Tracker) -> float:
        """Validate, then write a metrics row (CSV, W&B, log); returns the validation loss."""
        validation = self.validate()
        p = self.progress
        row = model_row(epoch, batch, kind, train, validation)
        row["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        row["windows_per_s"] = rate
        row["elapsed_s"] = p.elapsed + time.perf_counter() - self.started
        same = (epoch, batch, kind)
        p.rows = [r for r in p.rows if (r["epoch"], r["batch"], r["kind"]) != same] + [
            row
        ]  # once, on resume too
        if not self.process.main:
            return validation["loss"]
        write_metrics(self.plan.metrics_path, self.columns, p.rows)
        logged = tracked(row)
        for name, found in validation["counts"].items():
            shares = class_shares(found, self.plan.metadata.id_maps.get(name, {}))
            log.info(
                "predicted class shares of %s: %s",
                name,
                ", ".join(f"{k}: {v:.3f}" for k, v in shares.items()),
            )
            logged.update({f"class_share/{name}/{value}": share for value, share in shares.items()})
        tracker.log(logged, step=p.steps)
        trained = f"train loss {train[0]:.5f}" if epoch else "untrained"
        log.info(
            "epoch %d batch %d: %s, validation loss %.5f%s",
            epoch,
            batch,
            trained,
            validation["loss"],
            _accuracies(validation),
        )
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
            summary = {
                f"baseline/{kind}/{key}/{name}": value
                for kind, found in baselines.items()
                for key in ("losses", "accuracy")
                for name, value in found[key].items()
            }
            tracker.summary({**summary, **{f"baseline/{k}/loss": f["loss"] for k, f in baselines.items()}})
            best = baselines["best"]
            log.info(
                "baselines on the validation split (best per target): loss %.5f%s",
                best["loss"],
                _accuracies(best),
            )
        nothing = {n: math.nan for n in self.config["target_columns"]}
        self.record(0, 0, "epoch", (math.nan, nothing), math.nan, tracker)

    # -- the epochs -----------------------------------------------------------------------------

    def fit(self, tracker: Tracker) -> None:
        p, spec = self.progress, self.spec
        self.started = time.perf_counter()
        self.record_start(tracker)
        try:
            for epoch in range(p.epoch + 1, spec["epochs"] + 1):
                train, rate = self.train_epoch(epoch, tracker)
                validation = self.record(epoch, 0, "epoch", train, rate, tracker)
                with checkpoint.uninterrupted():  # the epoch's end, all or nothing
                    p.epoch, p.batches_done = epoch, 0
                    if validation < p.best_loss:
                        p.best_loss, p.best_epoch, p.stale_epochs = validation, epoch, 0
                        p.best_state = {
                            k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                        }
                    else:
                        p.stale_epochs += 1
                    if self.schedule is not None:
                        self.schedule.after_epoch()
                stop = (
                    spec["early_stopping_epochs"] is not None
                    and p.stale_epochs >= spec["early_stopping_epochs"]
                )
                if epoch % spec["save_interval_epochs"] == 0 or epoch == spec["epochs"] or stop:
                    p.elapsed += time.perf_counter() - self.started
                    self.started = time.perf_counter()
                    self.save_checkpoint()
                if stop:
                    log.info("early stopping: no better validation loss for %d epochs", p.stale_epochs)
                    break
        except KeyboardInterrupt:
            log.warning("interrupted: saving a checkpoint to resume from (continue_training: true)")
            p.elapsed += time.perf_counter() - self.started
            self.save_checkpoint()
            raise
        if p.best_state is None:  # no finite validation loss: the best model is the last one
            p.best_epoch = p.epoch
        tracker.summary({"best_epoch": p.best_epoch, "best_validation_loss": p.best_loss, "epochs": p.epoch})


def _accuracies(evaluation: dict) -> str:
    """ ", accuracy of {target} {value}" for each categorical target of an evaluation, for the log."""
    return "".join(f", accuracy of {n} {v:.4f}" for n, v in evaluation["accuracy"].items())
