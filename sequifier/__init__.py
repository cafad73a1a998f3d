"""sequifier: causal transformers for tables of sequences."""

__version__ = "0.1.0"
