"""The spurious-correlation dataset, its biased/unbiased models and their measurement.

Run as `python -m tools.spurious.<script>` from the repository root (see tools/__init__.py)."""
