# Two commands for a fresh machine (Python 3.11, pip and apt):
#   make demo   installs everything and runs scenario 1 end to end
#   make test   installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. another index for another build.
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,timeseries,analysis,prune,compress,openvino,executorch,search
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install system demo test test-slow lint format bench clean bench-scenarios

$(STAMP): pyproject.toml constraints.txt | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

system:
	bash scripts/setup-system.sh

# system first: creating the virtual environment may need python3-venv.
install: system $(STAMP)

demo: install
	$(BIN)/edgetrain demo

test: install
	$(BIN)/ruff check edgetrain tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/pytest -m "slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check edgetrain tests benchmarks
	$(BIN)/ruff format --check edgetrain tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format edgetrain tests benchmarks

bench: install
	$(BIN)/python benchmarks/engine_overhead.py

# The layer-scheduling scenario tables on the BPLS thesis' protocol (3 seeds; about 40
# minutes per scenario on one core, the two scenarios can run side by side).
bench-scenarios: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scenario_tables.py --protocol thesis \
		--scenario 1 --modes bpls --seeds 3 --lr-span 1 --adaptive ops=0.7 --adaptive mem=0.92
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scenario_tables.py --protocol thesis \
		--scenario 2 --modes bpls --seeds 3 --lr-span 1 --adaptive ops=0.7 --adaptive mem=0.96

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
