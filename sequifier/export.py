"""The former home of the pt bundle functions, kept for a release: use `sequifier.model.export`."""

import warnings

from sequifier.model.export import load_bundle, read_bundle

__all__ = ["load_bundle", "read_bundle"]

warnings.warn(
    "sequifier.export has moved to sequifier.model.export; this name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
