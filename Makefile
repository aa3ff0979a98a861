# The two commands (see README): `make reproduce` runs the default pipeline, `make test` the tests.
# Both build .venv/ with the pinned dependencies first and install the Fashion-MNIST package.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
CORES ?= 2
PYTEST_ARGS ?=
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: reproduce test install datasets bench gpu-check test-torch-oldest clean-results archive status

reproduce: install datasets
	snakemake --cores $(CORES)

test: install datasets
	python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

# torch first and alone, so nothing can pull an unpinned (multi-GB CUDA) torch in its place.
$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,tracking]'
	# cffconvert (the tests validate CITATION.cff with it) declares jsonschema<4, which our
	# jsonschema>=4.20 excludes; its validation runs unchanged on 4.x, so it comes without that pin.
	$(BIN)/python -m pip install --quiet 'pykwalify>=1.6' 'ruamel.yaml>=0.16'
	$(BIN)/python -m pip install --quiet --no-deps cffconvert==2.0.0
	touch $@

# The embedded default reads Debian's Fashion-MNIST package; install it where apt can.
datasets:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "note: $(FASHION_MNIST) is missing and apt is not usable here;" \
	         "install dataset-fashion-mnist or set datasets.fashion_mnist.root (config/README.md)"; \
	  fi; \
	fi

bench: install datasets
	python bench/bench_read.py
	python bench/bench_train.py
	python bench/bench_dryrun.py

# The GPU proof: GPU tests, GPU benchmark, paper-settings mini-grid, pack benchmark -> OUT (markdown
# + JSON), within GPU_CHECK_BUDGET_S; without a GPU, all at smoke size on the CPU (README "GPU").
# Uses the python on PATH (a GPU machine's own CUDA torch; PYTHON= another), not .venv.
gpu-check:
	@if [ -z "$(OUT)" ]; then echo "usage: make gpu-check OUT=dir"; exit 2; fi
	PATH="$(subst $(BIN):,,$(PATH))" scripts/gpu-check.sh "$(OUT)"

# The oldest torch the README claims (GPU machines bring their own build): the tests of the trainer,
# the kernel stage, the stream, DDP and tracking run under it too, in a venv of their own. PyPI's torch of
# that version is the CUDA build (~3.5 GB of wheels with its CUDA libraries; it runs on the CPU):
# downloaded once into $(WHEELS_OLDEST), installed from there. The project's other dependencies
# come from pyproject.toml (with the test and tracking extras), torch and torchvision left out.
TORCH_OLDEST := 2.11
TORCHVISION_OLDEST := 0.26
VENV_OLDEST := .venv-torch$(subst .,,$(TORCH_OLDEST))
WHEELS_OLDEST := .whl/torch$(TORCH_OLDEST)
OLDEST_TESTS := tests/test_train.py tests/test_pack.py tests/test_preprocess.py tests/test_kernel.py \
	tests/test_imagenet.py tests/test_ddp.py tests/test_models.py tests/test_distributed.py tests/test_stream.py \
	tests/test_compile.py tests/test_signals.py tests/test_tracking.py

test-torch-oldest: $(VENV_OLDEST)/.installed datasets
	$(VENV_OLDEST)/bin/python -m pytest -m 'not workflow and not slurm' $(OLDEST_TESTS) $(PYTEST_ARGS)

$(VENV_OLDEST)/.installed: pyproject.toml Makefile
	python3 -m pip download --quiet --dest $(WHEELS_OLDEST) 'torch==$(TORCH_OLDEST).*' 'torchvision==$(TORCHVISION_OLDEST).*'
	rm -rf $(VENV_OLDEST) && python3 -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install --quiet --no-index --find-links $(WHEELS_OLDEST) \
	  'torch==$(TORCH_OLDEST).*' 'torchvision==$(TORCHVISION_OLDEST).*'
	python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print(*(d for d in p["dependencies"] + p["optional-dependencies"]["test"] + p["optional-dependencies"]["tracking"] if not d.startswith("torch")), sep="\n")' \
	  > $(VENV_OLDEST)/requirements.txt
	$(VENV_OLDEST)/bin/python -m pip install --quiet -r $(VENV_OLDEST)/requirements.txt
	$(VENV_OLDEST)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

clean-results:
	rm -rf results/data results/logs .snakemake

# Bundle the finished run under results/archive/ (README "Archiving"). CONFIG=file for a run of
# another config; ARCHIVE_ARGS=--allow-incomplete to archive a run that is not complete.
CONFIG ?=
ARCHIVE_ARGS ?=
archive: install
	python -m rethink.archive build $(if $(CONFIG),--configfile $(CONFIG)) $(if $(DIRECTORY),--directory $(DIRECTORY)) $(ARCHIVE_ARGS)

# Where every cell of a run stands, from its files (README "Watching a run"). CONFIG=file(s) as for
# archive; STATUS_ARGS="--watch 30", --json, ... Not after `install`: it runs beside a run, whose
# environment it must never rebuild (the .venv a `make reproduce` made is there).
STATUS_ARGS ?=
status:
	python -m rethink.status $(if $(CONFIG),--configfile $(CONFIG)) $(STATUS_ARGS)
