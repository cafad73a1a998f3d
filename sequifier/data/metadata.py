"""The metadata file that preprocess writes and train and infer read, as a typed `Metadata`.

It holds everything data-dependent that later stages need: columns and their types, id maps,
class counts, real-column statistics, the window length, the splits and their paths (relative
to the project root), row and window counts, the preprocess config and a hash of the input.
Its `fingerprint` is a hash of what defines the windows and their encoding (every field but
where the input and the outputs are and which version wrote them: `UNHASHED`; of the preprocess
config, the keys that choose the windows: `WINDOW_KEYS`); every window file carries the
fingerprint of the metadata it was written with (fingerprints.py).
The file is JSON with a `format` key; `Metadata.load` checks it and names what is wrong with a
file of another version, or one edited since it was written. Checkpoints and exported models
carry the same content as a dict (`to_dict`).
"""

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from sequifier.errors import DataError
from sequifier.files import read_json, write_json

FORMAT = "sequifier-metadata/3"
VERSION = re.compile(r"^sequifier-metadata/(\d+)$")
EARLIER_FORMATS = {
    "sequifier-metadata/1": "its windows do not say which items are context from earlier splits, and its "
    "id maps and statistics were fitted on every split",
    "sequifier-metadata/2": "its windows carry no fingerprint that ties them to it, nor the itemPositions of "
    "their last items",
}
UNHASHED = (
    "sequifier_version", "fingerprint", "data_path", "input_hash", "split_paths", "write_format",
    "merge_output", "preprocess_config",
)  # fmt: skip
WINDOW_KEYS = ("stride_by_split", "subsequence_start_mode", "seed", "max_rows", "process_by_file")
SPLIT_NAMES = {1: ["train"], 2: ["train", "validation"], 3: ["train", "validation", "test"]}


def split_names(n_splits: int) -> list[str]:
    return SPLIT_NAMES.get(n_splits, [f"split{k}" for k in range(n_splits)])


@dataclass(frozen=True)
class Metadata:
    """What preprocessing fixed about the data. Per-column entries are keyed by column name."""

    sequifier_version: str  # of the preprocess run that wrote it
    data_path: str  # the input table, relative to the project root
    input_hash: str  # blake2b over the input files' bytes
    columns: list  # the feature columns, in input order
    column_types: dict  # "categorical" or "real"
    column_dtypes: dict  # how values are kept: "int64" or "string" (categorical), "double" (real)
    categorical_columns: list
    real_columns: list
    id_maps: dict  # categorical: {value as text: id}; ids from 3 up (0-2 reserved)
    n_classes: dict  # categorical: the highest id + 1 (the size of an embedding or a head)
    selected_columns_statistics: dict  # real: {"mean", "std"} the values are standardized with
    normalize_real_columns: bool  # whether real values are standardized in the windows
    fit_on_all_splits: bool  # whether id maps and statistics were fitted on all splits (else training)
    training_class_counts: dict  # categorical: items of the training split per id
    training_statistics: dict  # real: {"mean", "std"} over the training split's items
    other_values: dict  # categorical columns with values outside the id map: how many, of which split
    seq_length: int  # W: a window holds W + 1 items
    split_method: str
    split_ratios: list
    split_names: list
    split_paths: list  # the windows of each split, relative to the project root
    write_format: str  # parquet, csv or pt
    merge_output: bool  # one file per split, or a folder of shards
    n_rows: int
    n_sequences: int
    n_items: dict  # per split name
    n_windows: dict  # per split name
    preprocess_config: dict  # the config, without the keys that change how, not what, is computed
    n_irregular_sequences: int  # sequences whose itemPositions do not have one step throughout
    fingerprint: str = ""  # a hash of the encoding and the windows (`content_hash`)

    def content_hash(self) -> str:
        content = {k: v for k, v in asdict(self).items() if k not in UNHASHED}
        content["windows"] = {k: self.preprocess_config.get(k) for k in WINDOW_KEYS}
        as_read = json.loads(json.dumps(content))  # the content as the file gives it back
        text = json.dumps(as_read, sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def fingerprinted(self) -> "Metadata":
        """This metadata with its fingerprint."""
        return replace(self, fingerprint=self.content_hash())

    def to_dict(self) -> dict:
        """The content as the file holds it (and checkpoints and exported models carry it)."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data, source: str, remedy: str = "run `sequifier preprocess` again") -> "Metadata":
        """Metadata from the content of a file (or a model's copy); `source` names it in errors,
        `remedy` says how to get metadata of this version."""
        found = data.get("format") if isinstance(data, dict) else None
        if found in EARLIER_FORMATS:
            raise DataError(
                f"{source}: metadata of format {found}, written by an earlier version of sequifier "
                f"({EARLIER_FORMATS[found]}); {remedy}"
            )
        newer = VERSION.match(found) if isinstance(found, str) else None
        if newer and int(newer.group(1)) > int(VERSION.match(FORMAT).group(1)):
            raise DataError(
                f"{source}: metadata of format {found}, written by a newer version of sequifier "
                f"({data.get('sequifier_version', 'unknown')}); this version reads {FORMAT}: upgrade "
                f"sequifier, or {remedy} with this version"
            )
        if found != FORMAT:
            raise DataError(
                f"{source}: not a sequifier metadata file (expected format {FORMAT}, found {found!r})"
            )
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise DataError(f"{source}: the metadata lacks {', '.join(missing)}; {remedy}")
        metadata = cls(**{name: data[name] for name in names})
        if metadata.fingerprint != metadata.content_hash():
            raise DataError(
                f"{source}: the metadata was changed after it was written (its fingerprint "
                f"{metadata.fingerprint} does not match its content); the windows were encoded with the "
                f"metadata as written: {remedy}"
            )
        return metadata

    @classmethod
    def load(cls, path) -> "Metadata":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: metadata file not found; run `sequifier preprocess` first")
        try:
            data = read_json(path)
        except ValueError as error:
            raise DataError(f"{path}: not a valid metadata file: {error}") from None
        return cls.from_dict(data, str(path))

    def save(self, path) -> None:
        write_json(path, self.to_dict())

    def id_map(self, column: str) -> dict:
        """{value: id} of a categorical column, the values in their own type (int or str)."""
        return id_map_from_json(self.id_maps[column], self.column_dtypes[column])

    def scale(self, column: str) -> tuple[float, float]:
        """(mean, std) a real column's values are standardized with in the windows; (0, 1) when not."""
        if not self.normalize_real_columns:
            return 0.0, 1.0
        stats = self.selected_columns_statistics[column]
        return stats["mean"], stats["std"] if stats["std"] > 0 else 1.0


def input_name(data_path: Path) -> str:
    """The name in the outputs' file names: the input file's stem or the input folder's name."""
    return data_path.stem if data_path.is_file() else data_path.name


def metadata_path_of(config: dict) -> Path:
    """Where a preprocess config writes its metadata."""
    root = Path(config["project_root"])
    name = input_name(root / config["data_path"])
    return root / (config["metadata_config_path"] or f"configs/metadata_configs/{name}.json")


def id_map_to_json(id_map: dict) -> dict:
    return {str(k): v for k, v in id_map.items()}


def id_map_from_json(raw: dict, dtype: str) -> dict:
    return {(int(k) if dtype == "int64" else k): v for k, v in raw.items()}
