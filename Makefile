# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# CIFAR-10 for `make run`: the JPEG copy beside the project when it is there, else ./data (downloaded if missing).
DATA   ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),../shared/data,./data)
FETCH  ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),,--download)

.PHONY: run test install bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The tested torch first: an open requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The main job: baseline, SE and SB under the quick protocol, tables and figures in results/compare-quick.
run: install
	$(VENV)/bin/sbattn compare --preset quick --data-dir $(DATA) $(FETCH)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/data.py

clean:
	rm -rf $(VENV) build *.egg-info
