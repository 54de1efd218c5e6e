# The two commands a user needs: `make demo` and `make test` (both create .venv when missing); also bench, lint,
# gpu-check and clean.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo
PYTEST_ARGS ?=
# pytest-xdist: one worker per core (at most 4); `make test PYTEST_PARALLEL=` runs serially
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist loadgroup

.PHONY: test demo bench lint clean gpu-check

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m mde.demo --out $(DEMO)

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

# On a CUDA machine with mde installed (README "GPU check"); ORT_PATH: onnxruntime-gpu joined by wheel_parts.py
GPU_CHECK_OUT ?= runs/gpu-check
ORT_PATH      ?= .whl/site
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) $(if $(wildcard $(ORT_PATH)/onnxruntime),--ort-path $(ORT_PATH))

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/vermin -q --target=3.10- --violations --no-tips --eval-annotations \
		mde train export calibration runtime benchmarks examples tools

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
