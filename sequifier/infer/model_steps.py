"""One model between stored windows and output tables: the steps that single predictions and
generation share.

`encode` turns windows into the S items the model reads, in the model's encoding. `step` runs a
generative model once over such contexts and decodes its outputs into the next items: the values
written, the class probabilities asked for, and the same items in the model's encoding (what
generation appends to the context). `embed` runs an embedding model. `outputs` names every table a
model writes with its columns; `prediction_tables` and `embedding_tables` fill them.
"""

import logging

import numpy as np

from sequifier.data.columns import FILE_NAME, POSITION, SEQUENCE, SUBSEQUENCE, plain_names
from sequifier.data.window_files import PAD
from sequifier.errors import NumericError
from sequifier.infer.decode import DataTranslator, OutputDecoder
from sequifier.infer.plan import ModelSetup
from sequifier.infer.sampling import Sampler, std_columns

log = logging.getLogger(__name__)


class ModelSteps:
    """A loaded model with what it needs to read windows and to write what it predicts."""

    def __init__(self, predictor, setup: ModelSetup, config: dict):
        self.predictor = predictor  # {input column: [batch, S]} -> the model's outputs (predictors.py)
        self.setup = setup  # the targets written, those with probabilities, those sampled
        self.inputs = [name for name, *_ in predictor.args.input_columns]
        self.kinds = {name: kind for name, kind, _ in predictor.args.target_columns}
        self.translate = DataTranslator(  # the data's encoding -> the model's
            setup.data_metadata, setup.model_metadata, self.inputs, str(setup.data_path)
        )
        self.decoder = OutputDecoder(setup.model_metadata, config["map_to_id"])  # and back
        self.sampler = Sampler(config)  # the draws of the sampled targets (sampling.py)
        self.batch_size = config["inference_batch_size"]  # windows per forward pass
        self.embedding = predictor.description["kind"] == "embedding"
        gaussian = [name for name in setup.targets if name in predictor.args.gaussian_targets]
        self.stds = std_columns(setup.targets, gaussian, (SEQUENCE, POSITION))  # {target: its std column}
        targets = list(self.kinds)  # in file names by their names where they can be, else by position
        self.file_names = dict(zip(targets, plain_names(targets, FILE_NAME, "target")))
        for target in self.setup.probabilities:
            if self.file_names[target] != target:
                log.info("the probabilities of %r are written to %s files", target, self.file_names[target])

    def outputs(self) -> list:
        """(name, folder, suffix, columns) of every output this model writes."""
        if self.embedding:
            dims = [str(i) for i in range(self.predictor.args.dim_model)]
            return [("embeddings", "embeddings", "embeddings", [SEQUENCE, SUBSEQUENCE, POSITION, *dims])]
        written = [column for name in self.setup.targets for column in (name, self.stds.get(name)) if column]
        found = [("predictions", "predictions", "predictions", [SEQUENCE, POSITION, *written])]
        for target in self.setup.probabilities:
            names = [SEQUENCE, POSITION, *self.decoder.class_names(target)]
            suffix = f"{self.file_names[target]}-probabilities"
            found.append((f"probabilities of {target}", "probabilities", suffix, names))
        return found

    def encode(self, chunk: dict, rows: np.ndarray | None = None) -> dict:
        """The S items that the output of each window of a chunk (or of its `rows`) is computed from,
        in the model's encoding: the first S of the S + k read (the window's last item is the one
        predicted, k = target_offset steps after them), or the last S for an embedding and for a
        masked model (its items 1..W, as in its training)."""
        picked = slice(None) if rows is None else rows
        blocks = {name: chunk[name][picked].numpy() for name in self.inputs}
        blocks = self.translate(blocks, chunk[PAD][picked].numpy())
        length, masked = self.predictor.args.seq_length, self.predictor.args.objective == "masked"
        window = slice(-length, None) if self.embedding or masked else slice(None, length)
        return {name: np.ascontiguousarray(block[:, window]) for name, block in blocks.items()}

    def step(self, context: dict, sequences: np.ndarray) -> tuple[dict, dict, dict]:
        """The next item of every context (of the sequences `sequences`): (values per target,
        probabilities per target asked for, the items in the model's encoding)."""
        return self.decode(self.forward(context, sequences))

    def embed(self, context: dict, sequences: np.ndarray) -> np.ndarray:
        """The final hidden state of every context's last item: [batch, dim_model]."""
        return self.forward(context, sequences)

    def forward(self, context: dict, sequences: np.ndarray):
        """The predictor over contexts of any number, in batches of batch_size; outputs that are
        not finite are an error (before anything of them is written)."""
        size, n = self.batch_size, len(next(iter(context.values())))
        parts = [
            self.predictor({k: v[start : start + size] for k, v in context.items()})
            for start in range(0, n, size)
        ]
        if isinstance(parts[0], np.ndarray):
            outputs = np.concatenate(parts)
        else:
            outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        self._check_finite(outputs, sequences)
        return outputs

    def _check_finite(self, outputs, sequences: np.ndarray) -> None:
        found = {"embedding": outputs} if isinstance(outputs, np.ndarray) else outputs
        bad = np.zeros(len(sequences), dtype=bool)
        for out in found.values():
            bad |= ~np.isfinite(out.reshape(len(sequences), -1)).all(axis=1)
        if not bad.any():
            return
        first = sequences[int(np.argmax(bad))]
        first = first.item() if isinstance(first, np.generic) else first
        names = ", ".join(name for name, out in found.items() if not np.isfinite(out).all())
        raise NumericError(
            f"{self.predictor.path}: the model's outputs ({names}) are not finite (NaN or inf) for "
            f"{int(bad.sum())} of {len(bad)} windows (the first of sequenceId {first!r}); nothing is written "
            "for this model: its weights are not finite (train again; the metrics show whether the loss "
            "was), or the data's real values lie far beyond those it was trained on"
        )

    def decode(self, outputs: dict) -> tuple[dict, dict, dict]:
        """Per target: a real value, or a class (argmax, or a draw for the sampled targets)."""
        values, probabilities, encoded = {}, {}, {}
        for target in self.setup.targets:
            out = outputs[target]
            if target in self.stds:  # [batch, 2]: the mean and the variance, in the model's scale
                mean, variance = out[:, 0], out[:, 1]
                item = self.sampler.real(mean, variance) if target in self.setup.sampled else mean
                values[target], encoded[target] = self.decoder.real(target, item), item
                values[self.stds[target]] = self.decoder.real_std(target, np.sqrt(variance))
                continue
            if self.kinds[target] == "real":
                values[target], encoded[target] = self.decoder.real(target, out), out
                continue
            probs = self.decoder.probabilities(target, out)
            index = self.sampler.categorical(probs) if target in self.setup.sampled else probs.argmax(axis=1)
            values[target], encoded[target] = (
                self.decoder.ids(target, index),
                self.decoder.class_ids(target, index),
            )
            if target in self.setup.probabilities:
                probabilities[target] = probs
        return values, probabilities, encoded

    def prediction_tables(self, sequences, positions, values: dict, probabilities: dict) -> list:
        """(output name, columns) of the predictions and of each target's probabilities."""
        tables = [("predictions", {SEQUENCE: sequences, POSITION: positions, **values})]
        for target, probs in probabilities.items():
            names = self.decoder.class_names(target)
            columns = {SEQUENCE: sequences, POSITION: positions}
            columns.update({name: probs[:, i] for i, name in enumerate(names)})
            tables.append((f"probabilities of {target}", columns))
        return tables

    @staticmethod
    def embedding_tables(ids: dict, positions, embeddings: np.ndarray) -> list:
        """(output name, columns) of the embeddings of windows with these identities."""
        columns = {SEQUENCE: ids[SEQUENCE], SUBSEQUENCE: ids[SUBSEQUENCE], POSITION: positions}
        columns.update({str(i): embeddings[:, i] for i in range(embeddings.shape[1])})
        return [("embeddings", columns)]
