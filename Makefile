# Two commands do all the set-up: `make reproduce` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# One-line config-file checks before Snakemake starts (vlminterp.command_line: a .pth in the venv).
HOOK   := $(VENV)/.snakemake-checks
CORES  ?= all
# `make test` runs on two pytest-xdist workers, one test group each at a time (tests/conftest.py).
PYTEST_WORKERS ?= -n 2 --dist loadgroup --no-loadscope-reorder
# Which run: `make reproduce CONFIG=configs/llava-1.5-7b.yaml`; RUN (its `run:` key) names
# results/<run>/ for report, push and pull (`make pull RUN=tiny`).
CONFIG ?= config.yaml
RUN    ?= $(shell $(PYTHON) -c "import re,sys; print(re.search(r'^run:\s*(\S+)', open('$(CONFIG)').read(), re.M).group(1))")

.PHONY: install reproduce report test test-fast bench smoke-gpu push pull clean lock

install: $(STAMP) $(HOOK)

# The packages are byte-compiled on every core (pip compiles one file at a time: 110 -> 75 s here);
# a file this Python cannot compile (torch's 3.12-only test helpers) is skipped, as pip skips it.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock
	-$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(HOOK): $(STAMP) src/vlminterp/command_line.py
	$(BIN)/python -m vlminterp.command_line --install-hook
	touch $(HOOK)

reproduce: install
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/$(RUN)/report.html

report: install
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/$(RUN)/report.html

test: install
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow"

bench: install
	$(BIN)/python -m benchmarks.run_all

smoke-gpu: install   ## LLaVA-1.5-7B sizes, random bf16 weights, every stage on a few images, one GPU (README)
	$(BIN)/python -m benchmarks.gpu_smoke --size 7b --device cuda

push: install    ## share results/$(RUN) (and data/ if present) through the DVC remote; then commit the pointers
	$(BIN)/python -m vlminterp.artifacts push --run $(RUN) $(if $(wildcard data),--data)

pull: install    ## fetch results/$(RUN) from the DVC remote (plain `dvc pull` works too)
	$(BIN)/python -m vlminterp.artifacts pull --run $(RUN) $(if $(wildcard data.dvc),--data)

lock:
	( echo '# Exact pins of every Python package (direct and transitive). Regenerate with: make lock'; \
	  $(BIN)/pip freeze --exclude-editable | sed "s/^torch==\(.*\)+cpu/torch==\1/" | sort -f ) > requirements.lock

clean:
	rm -rf results .snakemake
