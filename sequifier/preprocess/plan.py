"""The plan of a preprocess run: everything fixed before the data is read.

The config is checked beyond its schema, the input's header read and its column types fixed,
the number of parts chosen, and every path derived (outputs, metadata, the work folder).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from sequifier.data.metadata import input_name, metadata_path_of
from sequifier.errors import ConfigError
from sequifier.preprocess.encoding import load_precomputed_map
from sequifier.preprocess.reader import Columns, input_files, resolve_columns

EXECUTION_KEYS = ("n_cores", "n_partitions", "continue_preprocessing", "work_path")
CSV_BYTES_PER_PART = 64 << 20
ROWS_PER_PART = 2_000_000


@dataclass(frozen=True)
class Plan:
    """Everything fixed before the data is read: inputs, columns, parts and where files go."""

    config: dict
    source: str  # the config file, for error messages
    root: Path
    files: tuple
    read_format: str
    name: str
    columns: Columns
    n_parts: int
    strides: tuple
    merged: bool
    output: Path
    work: Path
    metadata_path: Path

    @property
    def partitioned(self) -> bool:
        """Whether parts are made by the partition step (else a part is the input or one file)."""
        return self.n_parts > 1 and not self.config["process_by_file"]

    def input_of(self, p: int) -> list:
        """The input files part p is made from."""
        return [self.files[p]] if self.config["process_by_file"] else list(self.files)

    def part_path(self, p: int) -> Path:
        return self.work / "parts" / f"part-{p}.arrow"

    def scan_path(self, p: int) -> Path:
        return self.work / "scans" / f"part-{p}.json"

    def sequences_path(self, p: int) -> Path:
        return self.work / "scans" / f"part-{p}.parquet"

    def sorted_path(self, p: int) -> Path:
        return self.work / "sorted" / f"part-{p}.arrow"

    def windows_path(self, p: int) -> Path:
        return self.work / "windows" / f"part-{p}"

    def id_map_paths(self) -> list:
        """The precomputed id maps the run reads."""
        folder = self.root / self.config["id_maps_path"]
        return [folder / f"{column}.json" for column in self.config["use_precomputed_maps"] or []]

    def split_path(self, k: int) -> Path:
        suffix = f".{self.config['write_format']}" if self.merged else ""
        return self.output / f"{self.name}-split{k}{suffix}"


def recorded_config(config: dict) -> dict:
    """The preprocess config as recorded: without the keys that change how, not what, is computed."""
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def _default_parts(files: list, read_format: str) -> int:
    """Enough parts that one holds about ROWS_PER_PART rows (for CSV, judged by file size)."""
    if read_format == "parquet":
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return max(1, math.ceil(rows / ROWS_PER_PART))
    return max(1, math.ceil(sum(f.stat().st_size for f in files) / CSV_BYTES_PER_PART))


def make_plan(config: dict, source: str = "preprocess config") -> Plan:
    """Check what the schema cannot and read the input's header."""
    ratios, fmt = config["split_ratios"], config["write_format"]
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{source}: split_ratios: {ratios} sum to {sum(ratios):g}; they must sum to 1")
    strides = config["stride_by_split"] or [config["seq_length"]] * len(ratios)
    if len(strides) != len(ratios):
        raise ConfigError(
            f"{source}: stride_by_split: {strides} has {len(strides)} values; "
            f"expected one per split ({len(ratios)}, as split_ratios)"
        )
    merged = config["merge_output"] if config["merge_output"] is not None else fmt != "pt"
    if merged and fmt == "pt":
        raise ConfigError(
            f"{source}: merge_output: true with write_format pt; pt always writes a folder of shards"
        )
    root = Path(config["project_root"])
    data_path = root / config["data_path"]
    files, read_format = input_files(data_path, config["read_format"])
    columns = resolve_columns(files, read_format, config["selected_columns"], config["column_types"])
    for column in config["use_precomputed_maps"] or []:
        if columns.kinds.get(column) != "categorical":
            raise ConfigError(
                f"{source}: use_precomputed_maps: '{column}' is not a categorical feature column "
                f"(categorical: {columns.categorical()})"
            )
        load_precomputed_map(root / config["id_maps_path"] / f"{column}.json", column, columns.dtype(column))
    if config["process_by_file"] and config["max_rows"] is not None:
        raise ConfigError(
            f"{source}: max_rows ({config['max_rows']}) cannot be combined with process_by_file: true "
            "(files are read independently); set one of them to null/false"
        )
    if config["process_by_file"]:
        n_parts = len(files)
    else:
        n_parts = config["n_partitions"] or _default_parts(files, read_format)
    name = input_name(data_path)
    output = root / config["output_path"]
    if data_path.is_dir() and output.resolve().is_relative_to(data_path.resolve()):
        raise ConfigError(
            f"{source}: output_path {output} lies in the input folder {data_path}, whose files are all read "
            "as input; set output_path to another folder"
        )
    metadata_path = metadata_path_of(config)
    work = (root / config["work_path"] if config["work_path"] else output) / f".{name}-work"
    return Plan(
        config,
        source,
        root,
        tuple(files),
        read_format,
        name,
        columns,
        n_parts,
        tuple(strides),
        merged,
        output,
        work,
        metadata_path,
    )
