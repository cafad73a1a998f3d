"""Streams of tables: made in a background thread, re-cut to a fixed number of rows, written."""

from queue import Full, Queue
from threading import Event, Thread

import pyarrow as pa


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


def write_stream(tables, open_writer, **options) -> None:
    """Write a stream of tables with the writer that `open_writer(schema)` opens for the first one
    (none without tables); `options` go to each write_table."""
    writer = None
    try:
        for table in tables:
            if writer is None:
                writer = open_writer(table.schema)
            writer.write_table(table, **options)
    finally:
        if writer is not None:
            writer.close()
