"""Golden tiny models per exporter (TorchScript, dynamo, tf2onnx, paddle2onnx) with autograd goldens.

Run as `python -m tools.goldens.<script>` from the repository root (see tools/__init__.py)."""
