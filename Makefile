# hilonas: `make demo` and `make test` set everything up in .venv and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch and torchvision are pinned as a pair: torchvision's operators only load beside the torch they were built for.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The real job, small: the table for this CPU (reused when latency_tables/ has one for this fingerprint), a
# 16-trial search with 2 Ray workers on the embedded dataset, the Pareto page with the space's reference
# architectures, and an export (with ONNX) of the front's knee, re-measured on this CPU.
DEMO_STUDY ?= demo
demo: $(STAMP)
	$(BIN)/hilonas flops litv2_s --time
	$(BIN)/hilonas hardware
	$(BIN)/hilonas latency build --space litv2_tiny --target cpu --threads 1 --batch 1
	$(BIN)/hilonas search --space litv2_tiny --target cpu --trials 32 --workers 2 --max-latency-ms 11 \
		--latency-margin auto --promote 2 --study $(DEMO_STUDY)
	$(BIN)/hilonas results $(DEMO_STUDY) --front
	$(BIN)/hilonas pareto $(DEMO_STUDY) --landmarks --out runs/$(DEMO_STUDY)/pareto.html
	$(BIN)/hilonas export $(DEMO_STUDY) --knee --out runs/$(DEMO_STUDY)/export --force --no-probe
	@echo "demo done: study runs/$(DEMO_STUDY)/study.db, page runs/$(DEMO_STUDY)/pareto.html, config runs/$(DEMO_STUDY)/export/arch.yaml"

# What CI runs: the linter, then every test (slow ones included): two workers taking whole files, then the
# timing-sensitive tests alone (tests/serial_modules.txt lists them).
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial $$(cat tests/serial_modules.txt)

# Quick loop while developing: the tests not marked slow (no Ray, no whole searches).
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check hilonas tests

clean:
	rm -rf $(VENV) runs .pytest_cache
