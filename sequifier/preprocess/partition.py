"""Partitioning by sequence: stable hashes of sequenceId, hash-range parts, sorted loading.

A part holds whole sequences. Parts are contiguous ranges of the 64-bit hash of sequenceId and
rows are ordered by (hash, sequenceId, itemPosition), so concatenating the parts in order gives
the same global order whatever the number of parts. Parts and other intermediate tables are kept
in Arrow IPC files between the steps (`write_ipc`, `read_ipc`).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from sequifier.data.columns import POSITION, SEQUENCE
from sequifier.data.streams import write_stream
from sequifier.errors import DataError
from sequifier.preprocess.reader import SOURCE_FILE, SOURCE_ROW, describe_row

_MIX = np.uint64(0x9E3779B97F4A7C15)


def sequence_hash(ids) -> np.ndarray:
    """A stable 64-bit hash per sequenceId (the same for the same value in any file or run).

    Integers are mixed with splitmix64; strings hashed with blake2b, once per distinct value.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return _splitmix(ids.to_numpy().astype(np.int64).view(np.uint64))
    encoded = ids.dictionary_encode()
    distinct = [hashlib.blake2b(v.encode(), digest_size=8).digest() for v in encoded.dictionary.to_pylist()]
    hashes = np.frombuffer(b"".join(distinct), dtype="<u8") if distinct else np.empty(0, dtype=np.uint64)
    return hashes[encoded.indices.to_numpy()]


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


def write_parts(batches, n_parts: int, schema: pa.Schema, paths: list[Path]) -> None:
    """Route the rows of every batch to the Arrow IPC file of their part."""
    writers = [ipc.new_file(path, schema) for path in paths]
    try:
        for table in batches:
            parts = part_of(sequence_hash(table.column(SEQUENCE)), n_parts)
            order = np.argsort(parts, kind="stable")
            bounds = np.searchsorted(parts[order], np.arange(n_parts + 1))
            for p in range(n_parts):
                if bounds[p + 1] > bounds[p]:
                    writers[p].write_table(take(table, order[bounds[p] : bounds[p + 1]]))
    finally:
        for writer in writers:
            writer.close()


def read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC file, read whole."""
    with pa.OSFile(str(path)) as source:
        return ipc.open_file(source).read_all()


def take(table: pa.Table, indices: np.ndarray) -> pa.Table:
    """Rows `indices` of a table (numeric columns through numpy, which is faster on many chunks)."""
    arrays = []
    for column in table.columns:
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            arrays.append(pa.array(column.to_numpy()[indices]))
        else:
            arrays.append(column.combine_chunks().take(pa.array(indices)))
    return pa.table(arrays, names=table.column_names)


@dataclass
class Part:
    """One part's rows, sorted by (hash, sequenceId, itemPosition), with sequence boundaries."""

    table: pa.Table  # sequenceId, itemPosition, features
    starts: np.ndarray  # row offset of each sequence, plus the total at the end
    hashes: np.ndarray  # per sequence

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def sequence_ids(self) -> pa.Array:
        return self.table.column(SEQUENCE).combine_chunks().take(pa.array(self.starts[:-1]))


def _sequence_order(unique_ids: np.ndarray, unique_hashes: np.ndarray) -> np.ndarray:
    """Rank of each distinct sequence in (hash, sequenceId) order."""
    if len(np.unique(unique_hashes)) == len(unique_hashes):
        order = np.argsort(unique_hashes, kind="stable")
    else:  # a 64-bit hash collision: break the tie by the id itself
        order = np.lexsort((np.unique(unique_ids, return_inverse=True)[1], unique_hashes))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def sort_part(table: pa.Table, files: list[Path], fmt: str) -> Part:
    """Sort a part, find its sequences and reject duplicate (sequenceId, itemPosition) pairs."""
    encoded = table.column(SEQUENCE).combine_chunks().dictionary_encode()
    codes, unique_ids = encoded.indices.to_numpy(), encoded.dictionary.to_numpy(zero_copy_only=False)
    unique_hashes = sequence_hash(encoded.dictionary)
    rank = _sequence_order(unique_ids, unique_hashes)
    row_rank, positions = rank[codes], table.column(POSITION).to_numpy()
    order = np.argsort(row_rank, kind="stable")  # fast when each sequence's rows are contiguous
    key, sorted_positions = row_rank[order], positions[order]
    same_sequence = key[1:] == key[:-1]
    if np.any(same_sequence & (sorted_positions[1:] < sorted_positions[:-1])):
        order = np.lexsort((positions, row_rank))
        key, sorted_positions = row_rank[order], positions[order]
    duplicate = np.flatnonzero(same_sequence & (sorted_positions[1:] == sorted_positions[:-1]))
    if len(duplicate):
        i, j = order[duplicate[0]], order[duplicate[0] + 1]
        source_file, source_row = table.column(SOURCE_FILE).to_numpy(), table.column(SOURCE_ROW).to_numpy()
        first = describe_row(files, fmt, source_file[i], source_row[i])
        second = describe_row(files, fmt, source_file[j], source_row[j])
        raise DataError(
            f"duplicate ({SEQUENCE}, {POSITION}) = ({table.column(SEQUENCE)[int(i)].as_py()!r}, "
            f"{int(positions[i])}) at {first} and {second} ({len(duplicate)} in all); "
            "every item of a sequence needs its own position"
        )
    table = table.drop_columns([SOURCE_FILE, SOURCE_ROW])
    if not np.array_equal(order, np.arange(len(order))):
        table = take(table, order)
    n = len(key)
    starts = np.concatenate([[0], np.flatnonzero(~same_sequence) + 1, [n] if n else []]).astype(np.int64)
    hashes = np.empty(len(unique_hashes), dtype=np.uint64)
    hashes[rank] = unique_hashes
    return Part(table=table, starts=starts, hashes=hashes)


def write_ipc(path: Path, tables) -> None:
    """Write tables to an Arrow IPC file (the fast intermediate format)."""
    write_stream(tables, lambda schema: ipc.new_file(path, schema))


def read_ipc(path: Path):
    """Yield the tables of an IPC file, one record batch at a time."""
    if not path.exists():
        return
    with pa.OSFile(str(path)) as source:  # read batch by batch: memory stays at one batch
        reader = ipc.open_file(source)
        if reader.num_record_batches == 0:  # a table without rows writes no batch
            yield reader.schema.empty_table()
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])
