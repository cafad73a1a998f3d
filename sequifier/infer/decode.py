"""Between encodings: the data's windows into the model's encoding, the model's outputs back to values.

Windows preprocessed with the model's own metadata pass unchanged. Data preprocessed on its own
has other ids and statistics: its ids are looked up by value in the model's id maps (values the
model never saw become "other"), its real values are brought to the model's scale. Outputs go
the other way: ids to the original values, real values to the original scale.
"""

import logging

import numpy as np

from sequifier.data.columns import OTHER_ID, class_column
from sequifier.data.metadata import Metadata

log = logging.getLogger(__name__)


def _values_by_id(metadata: Metadata, column: str) -> np.ndarray:
    """Array indexed by id holding the value of that id (reserved ids hold None)."""
    id_map = metadata.id_map(column)
    values = np.full(metadata.n_classes[column], None, dtype=object)
    for value, index in id_map.items():
        values[index] = value
    return values


class DataTranslator:
    """The data's encoding -> the model's, per input column; an identity where they agree."""

    def __init__(self, data_metadata: Metadata, model_metadata: Metadata, columns: list, source: str):
        self.lookups, self.affine = {}, {}
        for column in columns:
            if data_metadata.column_types[column] == "categorical":
                self._categorical(data_metadata, model_metadata, column, source)
            elif data_metadata.scale(column) != model_metadata.scale(column):
                (data_mean, data_std), (model_mean, model_std) = (
                    data_metadata.scale(column),
                    model_metadata.scale(column),
                )
                self.affine[column] = (data_std / model_std, (data_mean - model_mean) / model_std)

    def _categorical(
        self, data_metadata: Metadata, model_metadata: Metadata, column: str, source: str
    ) -> None:
        if data_metadata.id_maps[column] == model_metadata.id_maps[column]:
            return
        model_ids = model_metadata.id_maps[column]  # JSON keys: values as strings, on both sides
        lookup = np.arange(data_metadata.n_classes[column], dtype=np.int64)  # reserved ids stay
        unseen = []
        for key, data_id in data_metadata.id_maps[column].items():
            lookup[data_id] = model_ids.get(key, OTHER_ID)
            if key not in model_ids:
                unseen.append(key)
        if unseen:
            log.warning(
                "column '%s': %d values of %s are not in the model's id map and are read as 'other' "
                "(id %d), e.g. %s",
                column, len(unseen), source, OTHER_ID, ", ".join(unseen[:5]),
            )  # fmt: skip
        other = data_metadata.other_values.get(column)
        if other:
            log.warning(
                "column '%s': %d values of %s were read as 'other' (id %d) when it was preprocessed, since "
                "its id map holds only the values of its own training split (e.g. %s); they cannot be "
                "translated to the model's ids. Preprocess new data with fit_on_all_splits: true",
                column, other["values"], source, OTHER_ID, ", ".join(map(str, other["examples"])),
            )  # fmt: skip
        self.lookups[column] = lookup

    def __call__(self, chunk: dict, n_pad: np.ndarray) -> dict:
        """{column: model-encoded numpy array}; padding slots stay 0."""
        out = {}
        for column, block in chunk.items():
            if column in self.lookups:
                out[column] = self.lookups[column][block].astype(np.int32)
            elif column in self.affine:
                factor, shift = self.affine[column]
                slots = np.arange(block.shape[1])[None, :]
                out[column] = np.where(slots < n_pad[:, None], 0.0, block * factor + shift).astype(np.float32)
            else:
                out[column] = block
        return out


class OutputDecoder:
    """Model outputs -> what the user reads: class probabilities over the ordinary ids, values."""

    def __init__(self, model_metadata: Metadata, map_to_id: bool):
        self.metadata, self.map_to_id = model_metadata, map_to_id
        self._values, self._classes = {}, {}

    def classes(self, column: str) -> np.ndarray:
        """The ids a prediction can be: those of the id map (from 3; a precomputed map may
        leave gaps, which are no class)."""
        if column not in self._classes:
            self._classes[column] = np.sort(
                np.fromiter(self.metadata.id_maps[column].values(), dtype=np.int64)
            )
        return self._classes[column]

    def class_names(self, column: str) -> list:
        """Names of the probability columns: the values of the classes, or their ids, never a key
        column's name (`class_column`)."""
        ids = self.classes(column)
        if not self.map_to_id:
            return [str(i) for i in ids]
        values = self.values_by_id(column)
        return [class_column(str(values[i])) for i in ids]

    def values_by_id(self, column: str) -> np.ndarray:
        if column not in self._values:
            self._values[column] = _values_by_id(self.metadata, column)
        return self._values[column]

    def probabilities(self, column: str, logits: np.ndarray) -> np.ndarray:
        """Softmax over the classes (reserved ids are never a prediction): [batch, classes]."""
        ordinary = logits[:, self.classes(column)].astype(np.float64)
        ordinary = np.exp(ordinary - ordinary.max(axis=1, keepdims=True))
        return ordinary / ordinary.sum(axis=1, keepdims=True)

    def class_ids(self, column: str, class_index: np.ndarray) -> np.ndarray:
        """Indices into the classes -> the model's ids."""
        return self.classes(column)[class_index]

    def ids(self, column: str, class_index: np.ndarray):
        """Indices into the classes -> ids, or values with map_to_id."""
        ids = self.class_ids(column, class_index)
        if not self.map_to_id:
            return ids
        values = self.values_by_id(column)[ids]
        return values.astype(np.int64) if self.metadata.column_dtypes[column] == "int64" else values

    def real(self, column: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.metadata.scale(column)
        return values.astype(np.float64) * std + mean

    def real_std(self, column: str, stds: np.ndarray) -> np.ndarray:
        """A standard deviation in the model's scale -> the data's: times the column's std only."""
        return stds.astype(np.float64) * self.metadata.scale(column)[1]
