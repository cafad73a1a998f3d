"""`sequifier infer`: trained models applied to windows, results in the user's own format.

Generative models predict the last item of every window from the seq_length items before it (a
model of target_offset k: from the seq_length items ending k before it):
`sequenceId, itemPosition, <targets>` (itemPosition: the predicted item's, the window's
lastItemPosition), with the class
probabilities per categorical target if asked. Embedding models give the final hidden state of
a window's last item: `sequenceId, subsequenceId, itemPosition, 0..dim_model-1`. With
autoregression, each sequence's first window starts a generation of T items (generate.py).
Windows stream through in chunks, so memory does not grow with the data.
"""

import contextlib
import logging

import numpy as np
import torch
from tqdm import tqdm

from sequifier.data.columns import LAST, SEQUENCE
from sequifier.data.window_files import IDS, PAD, count_windows, read_chunks
from sequifier.files import locked
from sequifier.infer.generate import Generation
from sequifier.infer.masked import masked_tables
from sequifier.infer.model_steps import ModelSteps
from sequifier.infer.plan import make_infer_plan, model_setup
from sequifier.infer.predictors import TorchPredictor, load_predictor
from sequifier.infer.sinks import Sink

log = logging.getLogger(__name__)


class Application:
    """One model applied to its data: batches in, output columns out."""

    def __init__(self, plan, model_path):
        config = plan.config
        self.plan, self.config = plan, config
        dropout = config["infer_with_dropout"]
        self.predictor = load_predictor(model_path, config["device"], dropout, config["seed"], plan.source)
        self.setup = model_setup(plan, model_path, self.predictor.args, self.predictor.description)
        if isinstance(self.predictor, TorchPredictor):
            torch.manual_seed(config["seed"])  # Monte-Carlo dropout
        self.model = ModelSteps(self.predictor, self.setup, config)

    def run(self) -> list:
        """Write every output of the model over all its windows; returns the files or folders written."""
        files, sharded = self.setup.windows.files(), self.setup.data_path.is_dir()
        total = count_windows(self.setup.windows) if self.setup.windows.fmt == "parquet" else None
        generation = self._generation() if self.config["autoregression"] else None
        outputs = [
            self.setup.output(self.plan, folder, suffix) for _, folder, suffix, _ in self.model.outputs()
        ]
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                locked(
                    outputs,
                    f"the outputs of {self.setup.base} ({', '.join(p.name for p in outputs)})",
                    "sequifier infer",
                    "wait for it, or use another output_path",
                )
            )
            fmt = self.config["write_format"]
            sinks = {
                name: Sink(self.setup.output(self.plan, folder, suffix), fmt, columns, sharded, stack)
                for name, folder, suffix, columns in self.model.outputs()
            }
            bar = stack.enter_context(
                tqdm(total=total, desc=self.setup.base, unit="window", disable=None, leave=False)
            )
            for file in files:
                for sink in sinks.values():
                    sink.shard(file.stem)
                for chunk in read_chunks(self.setup.windows, file, ids=True):
                    tables = generation.add(chunk) if generation else self.chunk_tables(chunk)
                    self._write(sinks, tables)
                    bar.update(len(chunk[PAD]))
                if generation and sharded:
                    self._write(sinks, generation.flush())
            if generation:
                self._write(sinks, generation.flush())
            for sink in sinks.values():
                sink.close()
        return [sink.target for sink in sinks.values()]

    def _generation(self) -> Generation:
        """Autoregression from each sequence's first window (generate.py)."""
        steps, batch_size = self.config["autoregression_total_steps"], self.config["inference_batch_size"]
        irregular = self.setup.data_metadata.n_irregular_sequences
        if irregular:
            log.info(
                "%s of the data's %s sequences have itemPositions with uneven steps; their generated items "
                "continue from the window's last item by the step between its last two items",
                f"{irregular:,}", f"{self.setup.data_metadata.n_sequences:,}",
            )  # fmt: skip
        return Generation(self.model, steps, batch_size)

    @staticmethod
    def _write(sinks: dict, tables: list) -> None:
        for name, columns in tables:
            sinks[name].write(columns)

    def chunk_tables(self, chunk: dict) -> list:
        """(output name, columns) of every window of a chunk: its prediction, or its embedding."""
        if len(chunk[PAD]) == 0:  # a file without windows: its outputs hold the columns only
            return []
        if self.predictor.args.objective == "masked":  # fill in items, or every item's embedding
            return masked_tables(self.model, chunk, self.config)
        ids = chunk[IDS]
        positions = ids[LAST].astype(np.int64)
        context = self.model.encode(chunk)
        if self.model.embedding:
            return self.model.embedding_tables(ids, positions, self.model.embed(context, ids[SEQUENCE]))
        values, probabilities, _ = self.model.step(context, ids[SEQUENCE])
        return self.model.prediction_tables(ids[SEQUENCE], positions, values, probabilities)


def run(loaded: dict, source: str = "infer config") -> dict:
    """Apply every model of the config; returns {model path: [output files or folders]}."""
    plan = make_infer_plan(loaded, source)
    written = {}
    for model_path in plan.models:
        application = Application(plan, model_path)
        written[str(model_path)] = application.run()
        log.info("%s: wrote %s", model_path.name, ", ".join(str(p) for p in written[str(model_path)]))
    return written
