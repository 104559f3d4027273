# Two entry points: `make demo` (explain the bundled photos with the bundled model) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/onnxcam: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/onnxcam

demo: $(BIN)/onnxcam
	$(BIN)/onnxcam explain models/mobilenet_v2/mobilenet_v2.onnx examples -o results --overwrite
	@echo "results: overlays, heatmaps (.npy) and results.json in $(CURDIR)/results"

test: $(BIN)/onnxcam
	$(BIN)/python -m pytest

bench: $(BIN)/onnxcam
	$(BIN)/python bench/bench_gradcam.py

clean:
	rm -rf $(VENV) results
