"""Task models (detection, segmentation, regression), FER target cases and the OCR models.

Run as `python -m tools.tasks.<script>` from the repository root (see tools/__init__.py)."""
