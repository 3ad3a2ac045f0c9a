# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# The interoperability environment: the newest torch this machine's index serves, its torchvision (a CUDA build
# that runs on the CPU; the CPU build of 2.13.0 has none here, and timm needs one), and timm.
INTEROP     ?= .venv-interop
INTEROP_PY  := $(INTEROP)/bin/python
INTEROP_TORCH ?= torch==2.14.1 torchvision==0.29.1
# CIFAR-10 for `make run`: the JPEG copy beside the project when it is there, else ./data (downloaded if missing).
DATA   ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),../shared/data,./data)
FETCH  ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),,--download)

.PHONY: run test test-main test-interop install install-interop bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The tested torch first: an open requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

$(INTEROP)/.installed: pyproject.toml
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP_PY) -m pip install --quiet $(INTEROP_TORCH)
	$(INTEROP_PY) -m pip install --quiet -e ".[timm]" "pytest>=7"
	touch $@

install-interop: $(INTEROP)/.installed

# The main job: baseline, SE and SB under the quick protocol, tables and figures in results/compare-quick.
run: install
	$(VENV)/bin/sbattn compare --preset quick --data-dir $(DATA) $(FETCH)

# Both environments: the main suite on the tested CPU torch, then tests/interop (timm, FX feature extraction, the
# zoo) and the supported-range test on the newest torch with timm.
test: test-main test-interop

test-main: install
	$(PY) -m pytest -q

test-interop: install-interop
	$(INTEROP_PY) -m pytest -q tests/interop tests/test_supported_torch.py

bench: install
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/data.py

clean:
	rm -rf $(VENV) $(INTEROP) build *.egg-info
