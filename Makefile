# Entry points: `make demo` (explain the bundled photos with the bundled model), `make test`,
# `make test-ort-training` (the onnxruntime-training backend) and `make test-ray` (Ray Data), the last
# two each in its own environment.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# onnxruntime is an explicit choice: `make test RUNTIME=gpu` installs onnxruntime-gpu instead.
RUNTIME ?= cpu

.PHONY: demo test test-ort-training test-ray bench clean web-deps web-demo bench-export

$(BIN)/onnxcam: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(RUNTIME),test]'
	touch $(BIN)/onnxcam

demo: $(BIN)/onnxcam
	$(BIN)/onnxcam explain models/mobilenet_v2/mobilenet_v2.onnx examples/*.png -o results --overwrite
	@echo "results: overlays, heatmaps (.npy) and results.json in $(CURDIR)/results"

test: $(BIN)/onnxcam
	$(BIN)/python -m pytest

# The second gradient backend (onnxcam/backends/ort_training.py) checked against onnxcam's engine.
# onnxruntime-training replaces the onnxruntime package, so it gets its own environment; 1.19.2 is
# its last release and loads IR <= 10 / opset <= 21, hence onnx 1.16 (numpy < 2 for that onnx).
# onnxcam goes in with --no-deps so that onnxruntime-gpu is not pulled in next to it.
ORTT     ?= .venv-ortt
ORTT_PKGS = onnxruntime-training==1.19.2 onnx==1.16.2 "numpy>=1.23,<2" "click>=8.0" "opencv-python-headless>=4.6" "pytest>=7"

$(ORTT)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ORTT)
	$(ORTT)/bin/pip install -q --upgrade pip
	$(ORTT)/bin/pip install -q $(ORTT_PKGS)
	$(ORTT)/bin/pip install -q --no-deps -e .
	touch $@

test-ort-training: $(ORTT)/.installed
	$(ORTT)/bin/python -m pytest tests/test_backend_ort_training.py

# Ray Data (onnxcam/scale/, `explain --ray`): the `ray` extra in its own environment, and the tests
# marked `ray` (a local 2-CPU Ray in a child process under a hard timeout; moto's S3 server on
# 127.0.0.1 for the s3:// source). About 2 minutes once installed.
RAYV ?= .venv-ray

$(RAYV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RAYV)
	$(RAYV)/bin/pip install -q --upgrade pip
	$(RAYV)/bin/pip install -q -e '.[$(RUNTIME),test,ray]' 'moto[server]' boto3
	touch $@

test-ray: $(RAYV)/.installed
	$(RAYV)/bin/python -m pytest -m ray

bench: $(BIN)/onnxcam
	$(BIN)/python bench/bench_gradcam.py

clean:
	rm -rf $(VENV) $(ORTT) $(RAYV) results

# Exported --heatmap models outside Python (web/README.md): onnxruntime-node and -web, pinned by
# web/package-lock.json (no CUDA download), and Debian's chromium for the browser test.
web-deps:
	cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

web-demo: $(BIN)/onnxcam
	$(BIN)/onnxcam export models/mobilenet_v2/mobilenet_v2.onnx -o web/demo/model.onnx --heatmap --rgb-input --target-runtime web --overwrite
	@echo "now: node web/serve.mjs, then open http://127.0.0.1:8000/web/demo/"

bench-export: $(BIN)/onnxcam
	$(BIN)/python bench/bench_export_heatmap.py
