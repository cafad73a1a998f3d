"""`sequifier infer`: trained models applied to windows, results in the user's own format.

Generative models predict the last item of every window from the seq_length items before it:
`sequenceId, itemPosition, <targets>` (itemPosition: the predicted item's), with the class
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

from sequifier.data.columns import SEQUENCE, START, SUBSEQUENCE
from sequifier.data.window_files import IDS, PAD, count_windows, read_chunks
from sequifier.infer.decode import DataTranslator, OutputDecoder, sample
from sequifier.infer.generate import Generation
from sequifier.infer.plan import make_infer_plan, model_setup
from sequifier.infer.predictors import TorchPredictor, load_predictor
from sequifier.infer.sinks import Sink

log = logging.getLogger(__name__)
POSITION = "itemPosition"


class Application:
    """One model applied to its data: batches in, output columns out."""

    def __init__(self, plan, model_path):
        config = plan.config
        self.plan, self.config = plan, config
        dropout = config["infer_with_dropout"]
        self.predictor = load_predictor(model_path, config["device"], dropout, config["seed"], plan.source)
        args, description = self.predictor.args, self.predictor.description
        self.setup = model_setup(plan, model_path, args, description)
        self.inputs = [name for name, *_ in args.input_columns]
        self.kinds = {name: kind for name, kind, _ in args.target_columns}
        self.translate = DataTranslator(
            self.setup.data_metadata, self.setup.model_metadata, self.inputs, str(self.setup.data_path)
        )
        self.decoder = OutputDecoder(self.setup.model_metadata, config["map_to_id"])
        self.generator = np.random.default_rng(config["seed"])
        if isinstance(self.predictor, TorchPredictor):
            torch.manual_seed(config["seed"])  # Monte-Carlo dropout
        self.width = self.setup.data_metadata.seq_length  # items before the last in a stored window

    def outputs(self) -> list:
        """(name, folder, suffix, columns) of every output this model writes."""
        if self.config["model_type"] == "embedding":
            dims = [str(i) for i in range(self.predictor.args.dim_model)]
            return [("embeddings", "embeddings", "embeddings", [SEQUENCE, SUBSEQUENCE, POSITION, *dims])]
        found = [("predictions", "predictions", "predictions", [SEQUENCE, POSITION, *self.setup.targets])]
        for target in self.setup.probabilities:
            names = [SEQUENCE, POSITION, *self.decoder.class_names(target)]
            found.append((f"probabilities of {target}", "probabilities", f"{target}-probabilities", names))
        return found

    def run(self) -> list:
        files, sharded = self.setup.windows.files(), self.setup.data_path.is_dir()
        total = count_windows(self.setup.windows) if self.setup.windows.fmt == "parquet" else None
        generation = Generation(self) if self.config["autoregression"] else None
        with contextlib.ExitStack() as stack:
            fmt = self.config["write_format"]
            sinks = {
                name: Sink(self.setup.output(self.plan, folder, suffix), fmt, columns, sharded, stack)
                for name, folder, suffix, columns in self.outputs()
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

    @staticmethod
    def _write(sinks: dict, tables: list) -> None:
        for name, columns in tables:
            sinks[name].write(columns)

    def model_inputs(self, chunk: dict, embedding: bool) -> dict:
        """The S items a window's output is computed from, in the model's encoding."""
        blocks = {name: chunk[name].numpy() for name in self.inputs}
        blocks = self.translate(blocks, chunk[PAD].numpy())
        window = slice(1, None) if embedding else slice(None, -1)
        return {name: np.ascontiguousarray(block[:, window]) for name, block in blocks.items()}

    def forward(self, inputs: dict):
        """The predictor over inputs of any length, in batches of inference_batch_size."""
        size, n = self.config["inference_batch_size"], len(next(iter(inputs.values())))
        parts = [
            self.predictor({k: v[start : start + size] for k, v in inputs.items()})
            for start in range(0, n, size)
        ]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def chunk_tables(self, chunk: dict) -> list:
        if len(chunk[PAD]) == 0:  # a file without windows: its outputs hold the columns only
            return []
        ids = chunk[IDS]
        positions = ids[START].astype(np.int64) + self.width
        embedding = self.config["model_type"] == "embedding"
        outputs = self.forward(self.model_inputs(chunk, embedding))
        if embedding:
            columns = {SEQUENCE: ids[SEQUENCE], SUBSEQUENCE: ids[SUBSEQUENCE], POSITION: positions}
            columns.update({str(i): outputs[:, i] for i in range(outputs.shape[1])})
            return [("embeddings", columns)]
        values, probabilities, _ = self.decode(outputs)
        return self.prediction_tables(ids[SEQUENCE], positions, values, probabilities)

    def decode(self, outputs: dict) -> tuple[dict, dict, dict]:
        """(values per target, probabilities per target asked for, the items in the model's encoding)."""
        values, probabilities, encoded = {}, {}, {}
        for target in self.setup.targets:
            out = outputs[target]
            if self.kinds[target] == "real":
                values[target], encoded[target] = self.decoder.real(target, out), out
                continue
            probs = self.decoder.probabilities(target, out)
            index = sample(probs, self.generator) if target in self.setup.sampled else probs.argmax(axis=1)
            values[target], encoded[target] = (
                self.decoder.ids(target, index),
                self.decoder.class_ids(target, index),
            )
            if target in self.setup.probabilities:
                probabilities[target] = probs
        return values, probabilities, encoded

    def prediction_tables(self, sequences, positions, values: dict, probabilities: dict) -> list:
        tables = [("predictions", {SEQUENCE: sequences, POSITION: positions, **values})]
        for target, probs in probabilities.items():
            names = self.decoder.class_names(target)
            columns = {SEQUENCE: sequences, POSITION: positions}
            columns.update({name: probs[:, i] for i, name in enumerate(names)})
            tables.append((f"probabilities of {target}", columns))
        return tables


def run(loaded: dict, source: str = "infer config") -> dict:
    """Apply every model of the config; returns {model path: [output files or folders]}."""
    plan = make_infer_plan(loaded, source)
    written = {}
    for model_path in plan.models:
        application = Application(plan, model_path)
        written[str(model_path)] = application.run()
        log.info("%s: wrote %s", model_path.name, ", ".join(str(p) for p in written[str(model_path)]))
    return written
