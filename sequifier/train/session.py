"""`sequifier train`: one training session, start to end.

Plan the run, join the process group (under torchrun), build the `Trainer`, resume from the latest
checkpoint when asked, fit, and export the best and last models. Under torchrun only rank 0
writes anything.
"""

import contextlib
import copy
import logging
import os

import torch

from sequifier.files import locked, remove
from sequifier.model import export
from sequifier.model.network import Transformer
from sequifier.train import checkpoint, distributed, transfer
from sequifier.train.plan import TrainPlan, make_train_plan
from sequifier.train.tracking import Tracker
from sequifier.train.trainer import Trainer

log = logging.getLogger(__name__)


def export_run(
    plan: TrainPlan, last: Transformer, best_state: dict | None, best_epoch: int, last_epoch: int
) -> list:
    """Write the best and last models of a training run as its config asks; returns the files.

    The exports of an earlier run of the same model name are removed after the new ones are
    written (each atomically), so the models folder holds one best and one last model per name
    and an interruption at any point leaves a complete model behind."""
    config, written = plan.config, []
    earlier = export.exported_files(plan.models, plan.name)
    last = copy.deepcopy(last).cpu()
    best = copy.deepcopy(last)
    if best_state is None:
        log.warning("no validation loss was finite; the best model is the last one")
    else:
        best.load_state_dict(best_state)
    kinds = [kind for kind in ("generative", "embedding") if config[f"export_{kind}_model"]]
    suffixes = [suffix for suffix in ("pt", "onnx") if config[f"export_{suffix}"]]
    dropout = config["export_with_dropout"]
    for label, model, epoch in (("best", best, best_epoch), ("last", last, last_epoch)):
        for kind in kinds:
            description = export.describe(model, kind, epoch, config, plan.metadata.to_dict(), dropout)
            for suffix in suffixes:
                path = plan.model_path(label, epoch, kind == "embedding", suffix)
                if suffix == "pt":
                    export.write_bundle(path, model, description)
                else:
                    export.write_onnx(path, model, description)
                written.append(path)
    for stale in earlier:
        if stale not in written:
            remove(stale)
    return written


def _log_to_file(plan: TrainPlan) -> logging.Handler:
    plan.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(plan.log_path, delay=True)  # the file is made by its first line
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("sequifier").addHandler(handler)
    return handler


def _lock(plan: TrainPlan):
    """The lock on the files of the run's model name: its models, checkpoints, log and metrics."""
    name = f"sequifier-{plan.name}"
    return locked(
        [plan.models / name, plan.checkpoints / name, plan.logs / name],
        f"model_name {plan.name} (its models, checkpoints and metrics)",
        "sequifier train",
        "wait for it, or use another model_name",
    )


def run(loaded: dict, source: str = "train config") -> dict:
    """Train as the config says; returns the best epoch and loss and the files exported."""
    plan = make_train_plan(loaded, source)
    spec = plan.config["training_spec"]
    process = distributed.start(spec["device"], source)
    if not process.main:  # one voice: rank 0 reports, the others only warn
        logging.getLogger("sequifier").setLevel(logging.WARNING)
    handler, deterministic = None, torch.are_deterministic_algorithms_enabled()
    precision, owned = torch.get_float32_matmul_precision(), contextlib.ExitStack()
    try:
        if process.main:  # the process that lives the whole run holds the model name's files
            owned.enter_context(_lock(plan))
            handler = _log_to_file(plan)  # from here on: what the run says reaches its log file
            if not spec["continue_training"]:
                checkpoint.start_anew(plan.checkpoints, plan.name)
        if process.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
        if spec["enforce_determinism"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        trainer = Trainer(plan, process)
        latest = checkpoint.latest(plan.checkpoints, plan.name) if spec["continue_training"] else None
        if latest is not None:
            trainer.resume(latest)
        source = transfer.source_path(plan.config)
        if latest is None and source is not None:  # a resumed fine-tuning has its checkpoint
            transfer.init_from(trainer.model, source, plan.metadata.to_dict(), plan.source)
        log.info(
            "training %s: %d parameters, %d training and %d validation windows, %d process(es)",
            plan.name,
            sum(p.numel() for p in trainer.model.parameters()),
            len(trainer.train_data),
            len(trainer.validation_data),
            process.world,
        )
        with Tracker(plan.config["wandb"], plan.config, plan.logs, process.main, trainer.wandb_id) as tracker:
            trainer.wandb_id = tracker.run_id
            trainer.fit(tracker)
            distributed.check_replicas(process, trainer.model)
            p = trainer.progress
            written = (
                export_run(plan, trainer.model, p.best_state, p.best_epoch, p.epoch) if process.main else []
            )
            best = {
                plan.model_path("best", p.best_epoch, e, s) for e in (False, True) for s in ("pt", "onnx")
            }
            figures = {"best_epoch": p.best_epoch, "best_validation_loss": p.best_loss, "epochs": p.epoch}
            tracker.log_model(f"sequifier-{plan.name}", [path for path in written if path in best], figures)
        if process.main:
            log.info(
                "done: best epoch %d of %d (validation loss %.5f); %d model file(s) in %s; metrics in %s",
                p.best_epoch, p.epoch, p.best_loss, len(written), plan.models, plan.metrics_path,
            )  # fmt: skip
        return {"best_epoch": p.best_epoch, "best_loss": p.best_loss, "epochs": p.epoch, "models": written}
    finally:
        owned.close()
        torch.use_deterministic_algorithms(deterministic)
        torch.set_float32_matmul_precision(precision)
        if handler is not None:
            logging.getLogger("sequifier").removeHandler(handler)
            handler.close()
        distributed.stop(process)
