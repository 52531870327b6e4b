# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint clean

$(BIN)/tpo-ray: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# Without CUDA, install the CPU torch wheel first so no dependency pulls a CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install --quiet torch==2.13.0; fi
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/tpo-ray

demo: install
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(BIN)/tpo-ray demo --output $(OUT)

test: install
	$(BIN)/python -m pytest tests --durations=15 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check tpo_ray tests benchmarks jobs

clean:
	rm -rf $(VENV) demo-output .pytest_cache
