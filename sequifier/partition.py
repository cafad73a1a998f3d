"""Partitioning by sequence: stable hashes of sequenceId, hash-range parts, sorted loading.

A part holds whole sequences. Parts are contiguous ranges of the 64-bit hash of sequenceId and
rows are ordered by (hash, sequenceId, itemPosition), so concatenating the parts in order gives
the same global order whatever the number of parts.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sequifier.errors import DataError
from sequifier.table import POSITION, SEQUENCE, SOURCE_FILE, SOURCE_ROW, describe_row

_MIX = np.uint64(0x9E3779B97F4A7C15)


def sequence_hash(ids: pa.Array) -> np.ndarray:
    """A stable 64-bit hash per sequenceId (the same for the same value in any file or run)."""
    return pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False)), categorize=False)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + _MIX).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def seeded_uniform(hashes: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per sequence, fixed by its hash and the seed."""
    mixed = _splitmix(hashes ^ _splitmix(np.array([seed % (1 << 64)], dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def part_of(hashes: np.ndarray, n_parts: int) -> np.ndarray:
    """The hash-range part of each hash: floor(hash * n_parts / 2**64)."""
    return (((hashes >> np.uint64(32)) * np.uint64(n_parts)) >> np.uint64(32)).astype(np.int64)


def write_parts(batches, n_parts: int, schema: pa.Schema, paths: list[Path]) -> int:
    """Route the rows of every batch to the parquet file of their part; returns the row count."""
    writers = [pq.ParquetWriter(path, schema) for path in paths]
    rows = 0
    try:
        for _, table in batches:
            parts = part_of(sequence_hash(table.column(SEQUENCE)), n_parts)
            order = np.argsort(parts, kind="stable")
            bounds = np.searchsorted(parts[order], np.arange(n_parts + 1))
            for p in range(n_parts):
                if bounds[p + 1] > bounds[p]:
                    writers[p].write_table(table.take(order[bounds[p] : bounds[p + 1]]))
            rows += table.num_rows
    finally:
        for writer in writers:
            writer.close()
    return rows


@dataclass
class Part:
    """One part's rows, sorted by (hash, sequenceId, itemPosition), with sequence boundaries."""

    table: pa.Table  # sequenceId, itemPosition, features, source file and row
    hashes: np.ndarray  # per row
    starts: np.ndarray  # row offset of each sequence, plus the total at the end

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def sequence_ids(self) -> pa.Array:
        return self.table.column(SEQUENCE).take(pa.array(self.starts[:-1])).combine_chunks()

    def sequence_hashes(self) -> np.ndarray:
        return self.hashes[self.starts[:-1]]


def sort_part(table: pa.Table, files: list[Path], fmt: str) -> Part:
    """Sort a part, find its sequences and reject duplicate (sequenceId, itemPosition) pairs."""
    ids = table.column(SEQUENCE).combine_chunks()
    hashes = sequence_hash(ids)
    codes = pd.factorize(np.asarray(ids.to_numpy(zero_copy_only=False)), sort=False)[0]
    positions = table.column(POSITION).to_numpy()
    order = np.lexsort((positions, hashes))
    hashes, codes = hashes[order], codes[order]
    same_hash = hashes[1:] == hashes[:-1]
    if np.any(same_hash & (codes[1:] != codes[:-1])):  # a 64-bit hash collision: order by id too
        ranks = np.unique(np.asarray(ids.to_numpy(zero_copy_only=False)), return_inverse=True)[1]
        order = np.lexsort((positions, ranks, sequence_hash(ids)))
        hashes, codes = sequence_hash(ids)[order], codes[order]
        same_hash = hashes[1:] == hashes[:-1]
    table = table.take(pa.array(order))
    positions = positions[order]
    same_sequence = same_hash & (codes[1:] == codes[:-1])
    duplicate = np.flatnonzero(same_sequence & (positions[1:] == positions[:-1]))
    if len(duplicate):
        i = int(duplicate[0])
        source_file = table.column(SOURCE_FILE).to_numpy()
        source_row = table.column(SOURCE_ROW).to_numpy()
        first = describe_row(files, fmt, source_file[i], source_row[i])
        second = describe_row(files, fmt, source_file[i + 1], source_row[i + 1])
        raise DataError(
            f"duplicate ({SEQUENCE}, {POSITION}) = ({table.column(SEQUENCE)[i].as_py()!r}, "
            f"{int(positions[i])}) at {first} and {second} ({len(duplicate)} duplicates in all); "
            "every item of a sequence needs its own position"
        )
    n = len(positions)
    starts = np.concatenate([[0], np.flatnonzero(~same_sequence) + 1, [n] if n else []]).astype(np.int64)
    return Part(table=table, hashes=hashes, starts=starts)


def read_part(path: Path) -> pa.Table:
    return pq.read_table(path)
