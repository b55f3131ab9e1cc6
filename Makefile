# The two commands: `make serve` (set up, train a default model if none, serve under uWSGI) and
# `make test` (set up, run the whole suite). Both create .venv/ on first use.
PYTHON ?= python3
comma := ,
empty :=
space := $(empty) $(empty)
VENV := .venv
PY := $(VENV)/bin/python
# Pinned: this exact CPU build lies on the build machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# Extra pip arguments for torch, e.g. the CPU wheel index in the Dockerfile.
TORCH_PIP_ARGS ?=
# Optional dependency groups to install with the project ("[dev]" for tests; empty for production).
EXTRAS ?= [dev]
# One stamp per set of extras: after `make install EXTRAS=`, `make test` installs [dev] instead of finding the
# venv "installed" without pytest. Serving and training take any install there is (a production venv made
# with EXTRAS= stays without the test tools).
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(subst [,,$(subst ],,$(subst $(space),,$(EXTRAS)))))
ANY_STAMP := $(or $(firstword $(wildcard $(VENV)/.installed-*)),$(STAMP))
RECSYS_CHECKPOINT ?= artifacts/model.ckpt
export RECSYS_CHECKPOINT

.PHONY: install serve test lint train clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) $(TORCH)
	$(PY) -m pip install --quiet -e ".$(EXTRAS)"
	touch $(STAMP)

# Trains on the built-in synthetic data only when no checkpoint exists yet.
$(RECSYS_CHECKPOINT): | $(ANY_STAMP)
	$(PY) scripts/train.py --out $(RECSYS_CHECKPOINT)

serve: $(ANY_STAMP) $(RECSYS_CHECKPOINT)
	$(VENV)/bin/uwsgi --ini uwsgi.ini

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

train: $(ANY_STAMP)
	$(PY) scripts/train.py --out $(RECSYS_CHECKPOINT)

clean:
	rm -rf $(VENV) artifacts .pytest_cache
