# The book's task runner. Two commands matter (see README):
#   make book   fetch/verify data, build the mini world, run every notebook (cached), render the book
#   make test   run the test suite
# Everything runs inside .venv, created on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= mini
# On this project's CPU machines a CPU build of torch lies on disk; elsewhere set TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# The offline data mirror, if one sits beside the checkout (as in CI); downloads are tried otherwise.
export UNIDETOX_DATA_MIRROR ?= $(if $(wildcard ../shared/data/SHA256SUMS),$(abspath ../shared/data),)

.PHONY: install data world notebooks book html test bench plan clean-book

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

data: install
	$(PY) -m unidetox_core.data fetch

# The world's models and classifiers, side by side, before the chapters: built from the chapters,
# the source model would train alone in chapter 00 with a core idle. The world chapter writes the report.
WORLD_PROFILES := mini tiny

SMOKE_PROFILES := smoke smoke-small

world: data
	$(if $(filter $(PROFILE),$(WORLD_PROFILES)),$(PY) -m unidetox_core.world --profile $(PROFILE) --no-report,\
	$(if $(filter $(PROFILE),$(SMOKE_PROFILES)),$(PY) -m unidetox_core.smoke build,@echo "profile $(PROFILE) has no miniature world"))

notebooks: world
	$(PY) tools/run_notebooks.py --profile $(PROFILE)

html: install
	$(PY) tools/build_book.py --profile $(PROFILE)

book: notebooks
	$(PY) tools/build_book.py --profile $(PROFILE)

# What a hub profile's run will compute and cost, and whether this machine can run it (make plan PROFILE=paper).
plan: install
	$(PY) -m unidetox_core.plan --profile $(PROFILE)

test: data
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_distill.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_all.py
	$(PY) benchmarks/bench_idiomatic.py

clean-book:
	rm -rf _build
