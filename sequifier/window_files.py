"""Window tables and the files they are written to.

A window table is the wide format: one row per (window, column) with sequenceId, subsequenceId,
startItemPosition, contextSlots, inputCol and the values W..0 (oldest item first). contextSlots
counts the leading slots that are padding or items of earlier splits: context that is never a
target of the window's own split. The pt format stores the same windows as one tensor per
column, [windows, W + 1].
"""

from pathlib import Path
from queue import Full, Queue
from threading import Event, Thread

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from sequifier.table import SEQUENCE
from sequifier.windows import Windows, slot_rows, start_positions

SUBSEQUENCE, START, CONTEXT, INPUT_COLUMN = "subsequenceId", "startItemPosition", "contextSlots", "inputCol"
HEADER = (SEQUENCE, SUBSEQUENCE, START, CONTEXT, INPUT_COLUMN)  # the columns before the values
ROW_GROUP_WINDOWS = 8192
FLOAT32_EXACT_IDS = 1 << 24


def value_columns(seq_length: int) -> list[str]:
    return [str(i) for i in range(seq_length, -1, -1)]


def value_type(metadata: dict) -> pa.DataType:
    """One type for the value columns: int32 for ids only, else a float that holds ids exactly."""
    kinds = metadata["column_types"]
    if all(kind == "categorical" for kind in kinds.values()):
        return pa.int32()
    ids_fit = max(metadata["n_classes"].values(), default=0) <= FLOAT32_EXACT_IDS
    return pa.float32() if metadata["normalize_real_columns"] and ids_fit else pa.float64()


def value_matrix(encoded: dict, dtype: pa.DataType) -> np.ndarray:
    """The encoded columns side by side, [rows + 1, columns], with a last row of padding (0)."""
    values = next(iter(encoded.values()))
    matrix = np.zeros((len(values) + 1, len(encoded)), dtype=dtype.to_pandas_dtype())
    for c, column in enumerate(encoded.values()):
        matrix[:-1, c] = column
    return matrix


def window_table(
    sequence_ids: pa.Array,
    positions: np.ndarray,
    seq_start: np.ndarray,
    matrix: np.ndarray,
    names: list,
    windows: Windows,
    seq_length: int,
) -> pa.Table:
    """The wide table of `windows`: for each window one row per column (of `value_matrix`)."""
    n_columns, n_windows = len(names), len(windows)
    rows = slot_rows(seq_start, windows, seq_length, padding_row=len(matrix) - 1)
    stacked = matrix[rows].reshape(seq_length + 1, n_windows * n_columns)
    input_col = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(np.arange(n_columns, dtype=np.int32), n_windows)), pa.array(names)
    ).cast(pa.string())
    arrays = [
        sequence_ids.take(pa.array(np.repeat(windows.sequence, n_columns))),
        pa.array(np.repeat(windows.subsequence, n_columns)),
        pa.array(np.repeat(start_positions(positions, seq_start, windows), n_columns)),
        pa.array(np.repeat(windows.context.astype(np.int32), n_columns)),
        input_col,
        *(pa.array(row) for row in stacked),
    ]
    return pa.table(arrays, names=[*HEADER, *value_columns(seq_length)])


def write_ipc(path: Path, tables) -> None:
    """Write tables to an Arrow IPC file (the fast intermediate format)."""
    writer = None
    try:
        for table in tables:
            if writer is None:
                writer = ipc.new_file(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


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


def prefetched(tables, depth: int = 2):
    """Iterate `tables` while a background thread makes the next ones (Arrow and numpy release
    the GIL, so making windows overlaps encoding and writing them)."""
    queue, done, stopped = Queue(maxsize=depth), object(), Event()

    def put(item) -> bool:
        while not stopped.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce():
        try:
            for table in tables:
                if not put(table):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(error)
        put(done)

    Thread(target=produce, daemon=True).start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()  # a consumer that stops early releases the producer


def rechunk(tables, rows: int):
    """Re-cut a stream of tables into tables of exactly `rows` rows (the last may be shorter).

    A stream without rows gives one empty table, so that an empty split still has a file.
    """
    pending, count, produced, empty = [], 0, False, None
    for table in tables:
        empty = table.slice(0, 0) if empty is None else empty
        while table.num_rows:
            take = min(rows - count, table.num_rows)
            pending.append(table.slice(0, take))
            count += take
            table = table.slice(take)
            if count == rows:
                yield pa.concat_tables(pending).combine_chunks()
                pending, count, produced = [], 0, True
    if count:
        yield pa.concat_tables(pending).combine_chunks()
    elif not produced and empty is not None:
        yield empty


def _parquet_options(schema: pa.Schema) -> dict:
    """lz4; ids dictionary-encoded; float values byte-stream-split (dictionaries of floats are
    slow and gain nothing); statistics for the window ids only."""
    values = schema.names[len(HEADER) :]
    options = {"compression": "lz4", "write_statistics": list(HEADER)}
    if pa.types.is_integer(schema.field(values[0]).type):
        return {**options, "use_dictionary": True}
    return {
        **options,
        "use_dictionary": [SEQUENCE, CONTEXT, INPUT_COLUMN],
        "column_encoding": {name: "BYTE_STREAM_SPLIT" for name in values},
    }


def _write_parquet(path: Path, tables, rows_per_group: int) -> None:
    writer = None
    try:
        for table in rechunk(tables, rows_per_group):
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, **_parquet_options(table.schema))
            writer.write_table(table, row_group_size=rows_per_group)
    finally:
        if writer is not None:
            writer.close()


def _write_csv(path: Path, tables) -> None:
    writer = None
    try:
        for table in rechunk(tables, ROW_GROUP_WINDOWS * 16):
            if writer is None:
                writer = pacsv.CSVWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def to_tensors(table: pa.Table, columns: list[str], kinds: dict) -> dict:
    """The pt form of a window table: metadata tensors and one [windows, W + 1] tensor per column."""
    import torch

    n_columns = len(columns)
    values = np.stack([table.column(name).to_numpy() for name in table.column_names[len(HEADER) :]], axis=1)
    ids = table.column(SEQUENCE).to_numpy(zero_copy_only=False)[::n_columns]
    tensors = {}
    for c, name in enumerate(columns):
        block = values[c::n_columns]
        tensors[name] = torch.from_numpy(
            block.astype(np.int64) if kinds[name] == "categorical" else np.ascontiguousarray(block)
        )
    return {
        SEQUENCE: torch.from_numpy(ids.astype(np.int64)) if ids.dtype.kind in "iu" else ids.tolist(),
        SUBSEQUENCE: torch.from_numpy(table.column(SUBSEQUENCE).to_numpy()[::n_columns].copy()),
        START: torch.from_numpy(table.column(START).to_numpy()[::n_columns].copy()),
        CONTEXT: torch.from_numpy(table.column(CONTEXT).to_numpy()[::n_columns].copy()),
        "columns": list(columns),
        "values": tensors,
    }


def write_windows(target: Path, tables, fmt: str, merged: bool, columns: list, kinds: dict, per_file: int):
    """Write a stream of window tables as one file or as a folder of shards (`target` is new)."""
    n_columns = len(columns)
    if merged:
        if fmt == "parquet":
            _write_parquet(target, tables, ROW_GROUP_WINDOWS * n_columns)
        else:
            _write_csv(target, tables)
        return
    target.mkdir(parents=True)
    for i, table in enumerate(rechunk(tables, per_file * n_columns)):
        shard = target / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            _write_parquet(shard, [table], ROW_GROUP_WINDOWS * n_columns)
        elif fmt == "csv":
            _write_csv(shard, [table])
        else:
            import torch

            torch.save(to_tensors(table, columns, kinds), shard)
