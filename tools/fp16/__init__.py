"""Float16 conversions of committed golden models.

Run as `python -m tools.fp16.<script>` from the repository root (see tools/__init__.py)."""
