"""Architecture corpora (torchvision, Keras, Paddle, JAX exports with autograd goldens) and full-size checks.

Run as `python -m tools.arch.<script>` from the repository root (see tools/__init__.py)."""
