"""The network (`network`: nn.Modules only) and its exports (`export`: pt bundles and ONNX files)."""
