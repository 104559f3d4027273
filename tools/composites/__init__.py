"""Composite photos with known object boxes, and the localisation measurement on them.

Run as `python -m tools.composites.<script>` from the repository root (see tools/__init__.py)."""
