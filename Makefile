# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
#
# torch comes from pip's default index unless TORCH_INDEX is set. On Linux the public PyPI wheel
# of torch is the CUDA build (it pulls ~15 nvidia-* packages, several GB); CPU-only machines can
# take the much smaller CPU build instead:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# TORCH_INDEX is passed as --index-url to the torch install only; everything else comes from the
# default index. It matters only for the first install (delete .venv to reinstall).
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --progress-bar on
# Tiny models train 10-100x slower with torch's default thread count on small shared machines.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast test-vllm lint bench clean

$(BIN)/.installed: pyproject.toml
	@echo "== [1/3] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	@echo "== [2/3] installing torch==$(TORCH_VERSION) from $(or $(TORCH_INDEX),pip's default index) (the largest download)"
	$(PIP) torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@echo "== [3/3] installing the toolkit and its dependencies (editable, with the dev and deepspeed extras)"
	$(PIP) -e ".[dev,deepspeed]"
	touch $@

# Read when make starts, before any recipe: TORCH_INDEX acts only on a fresh .venv, so say so
# instead of ignoring it silently.
VENV_EXISTED := $(wildcard $(BIN)/python)

install: $(BIN)/.installed
ifneq ($(and $(TORCH_INDEX),$(VENV_EXISTED)),)
	@echo "note: TORCH_INDEX applies only to a fresh install and $(VENV) already exists, so its torch stays as it is; to install torch from $(TORCH_INDEX): rm -rf $(VENV), then run make again with TORCH_INDEX"
endif

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/ruff check .
	@echo "== pytest: collecting the suite first (importing torch and transformers takes up to a minute on a small machine)"
	$(BIN)/python -m pytest tests -v -p no:cacheprovider --durations=15
	@if [ "$(RUN_VLLM_TESTS)" != "0" ]; then $(MAKE) test-vllm; else echo "== vLLM tests skipped (RUN_VLLM_TESTS=0)"; fi

# The vLLM tests in their own venv (.venv-vllm: vLLM pins its torch build and an older transformers).
# On the 2-core machine: about 4 minutes to build it (once), 1.5 minutes of tests. RUN_VLLM_TESTS=0
# leaves them out of `make test`.
RUN_VLLM_TESTS ?= 1
test-vllm:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) TORCH_INDEX=$(TORCH_INDEX) bash scripts/test_vllm.sh

# While developing: everything but the learning and multi-process tests (marked `slow`), a few minutes.
# No -q here: pyproject.toml's addopts already has one, and a second hides the "N passed" line.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -m "not slow" -p no:cacheprovider --durations=10

bench: install
	$(BIN)/python scripts/bench_tabular.py

clean:
	rm -rf $(VENV) .venv-vllm runs out
