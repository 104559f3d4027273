"""Reference CAM maps from pytorch-grad-cam and torchcam for the method tests.

Run as `python -m tools.methods.<script>` from the repository root (see tools/__init__.py)."""
