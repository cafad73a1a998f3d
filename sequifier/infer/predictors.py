"""Trained models behind one call: a pt bundle run by torch, or an ONNX file run by onnxruntime.

`load_predictor(path, ...)` reads either; the predictor maps {input column: [batch, seq_length]
array} to the model's outputs as numpy arrays: {target: logits [batch, classes] or values
[batch]} for a generative model, [batch, dim_model] for an embedding model. Both kinds of file
carry the model's description (arguments, config, metadata), so nothing else is needed.
"""

import logging
from pathlib import Path

import numpy as np
import torch

from sequifier.devices import device_of
from sequifier.errors import ConfigError, DataError
from sequifier.model.export import export_head, load_bundle, read_onnx_description
from sequifier.model.network import ModelArgs

log = logging.getLogger(__name__)


class TorchPredictor:
    def __init__(self, path: Path, device: str, dropout: bool, source: str):
        model, bundle = load_bundle(path)
        self.path = path
        self.description = {key: value for key, value in bundle.items() if key != "state_dict"}
        self.args = model.args
        self.device = device_of(device, source, key="device")
        self.head = export_head(model.to(self.device).train(dropout), bundle["kind"])

    @torch.inference_mode()
    def __call__(self, inputs: dict) -> dict | np.ndarray:
        tensors = [torch.from_numpy(inputs[name]).to(self.device) for name, *_ in self.args.input_columns]
        outputs = self.head(*tensors)
        if isinstance(outputs, torch.Tensor):
            return outputs.float().cpu().numpy()
        return {name: out.float().cpu().numpy() for (name, *_), out in zip(self.args.target_columns, outputs)}


class OnnxPredictor:
    """An ONNX export in onnxruntime. With `dropout` (Monte-Carlo dropout of an export made with
    dropout), graph optimizations are off, since they remove dropout, and onnxruntime is seeded."""

    def __init__(self, path: Path, dropout: bool = False, seed: int = 0):
        import onnx
        import onnxruntime

        try:
            proto = onnx.load(str(path))
        except Exception as error:
            raise DataError(
                f"{path}: cannot read this ONNX file ({type(error).__name__}: {str(error)[:200]})"
            ) from None
        self.path = path
        self.description = read_onnx_description(path, proto)
        self.args = ModelArgs.from_dict(self.description["model_args"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are not the user's business
        if dropout:
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            onnxruntime.set_seed(seed)
        self.session = onnxruntime.InferenceSession(
            proto.SerializeToString(), options, providers=onnxruntime.get_available_providers()
        )
        columns = [name for name, *_ in self.args.input_columns]
        # the graph's input names in column order (older exports: the column names themselves)
        self.feed_names = dict(zip(columns, self.description.get("onnx_inputs", columns)))

    def __call__(self, inputs: dict) -> dict | np.ndarray:
        feed = {self.feed_names[name]: inputs[name] for name in self.feed_names}
        outputs = self.session.run(None, feed)
        if self.description["kind"] == "embedding":
            return outputs[0]
        return {name: out for (name, *_), out in zip(self.args.target_columns, outputs)}


def load_predictor(path: Path, device: str, dropout: bool, seed: int = 0, source: str = "infer config"):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    if path.suffix == ".onnx":
        return OnnxPredictor(path, dropout, seed)
    if path.suffix == ".pt":
        return TorchPredictor(path, device, dropout, source)
    raise ConfigError(f"model_path: {path} is neither a .pt bundle nor an .onnx file")
