"""`sequifier infer`: trained models applied to windows, results in the user's own format.

`application.run` applies each model of the `plan`: a predictor (`predictors`) behind the
`model_steps` that single predictions and generation share, which translate the data's ids and
scales into the model's and `decode` its outputs back to values (`sampling` draws the sampled
columns); `generate` runs autoregression, `masked` fills in the items of masked models and writes
their per-item embeddings, `sinks` write the outputs.

`run` is imported on first use, so that importing a module of this package stays light.
"""


def __getattr__(name: str):
    if name == "run":
        from sequifier.infer import application

        return getattr(application, name)
    raise AttributeError(f"module 'sequifier.infer' has no attribute {name!r}")
