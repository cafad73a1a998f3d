"""`sequifier preprocess`: a table of sequences -> training windows and their metadata.

`pipeline.run` runs every step (`steps`) over parts of the table (`partition`), read by `reader`
and encoded by `encoding`, as `plan` fixes them.

`run` is imported on first use, so that importing a module of this package stays light.
"""


def __getattr__(name: str):
    if name == "run":
        from sequifier.preprocess import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sequifier.preprocess' has no attribute {name!r}")
