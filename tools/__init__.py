"""Build-time scripts that generate and check the committed test data (tests/data/, models/,
examples/). They need heavy frameworks (torch, tensorflow, paddle, jax) in their own virtual
environments; the test suite never imports them.

Run a script as a module from the repository root, e.g.
``/work/venvs/tf/bin/python -m tools.arch.make_keras_corpus --only keras_vgg``: that is the one way
scripts import their shared helpers (``from tools import common``), with no sys.path edits.

Shared helpers: common.py (framework-free: tolerances, README sections, JSON tables, directional
check, seed search, ONNX inspection, onnxcam coverage check); keras_helpers.py, paddle_helpers.py
and torch_helpers.py (framework-specific, imported only by the scripts of that framework).
"""
