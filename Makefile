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
# The oldest timm that sbattn[timm] admits (pyproject's lower bound; tests/test_supported_torch.py checks they agree),
# installed beside the interop environment's newest and put first on PYTHONPATH for the models-by-name tests.
TIMM_OLDEST ?= 1.0.21
TIMM_OLDEST_DIR := build/timm-$(TIMM_OLDEST)
# `make test-wheel`'s folder (under build/, ignored): a fresh venv, the sdist and wheel, and the build's log.
WHEEL       ?= build/wheel-check
WHEEL_PY    := $(WHEEL)/venv/bin/python
# CIFAR-10 for `make run`: the JPEG copy beside the project when it is there, else ./data (downloaded if missing).
DATA   ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),../shared/data,./data)
FETCH  ?= $(if $(wildcard ../shared/data/cifar10-jpeg.tar.gz),,--download)

.PHONY: run test test-fast test-main test-interop test-wheel install install-interop mutate bench clean

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
	$(INTEROP_PY) -m pip install --quiet -e ".[timm]" "pytest>=7" "pytest-xdist>=3.5"
	touch $@

install-interop: $(INTEROP)/.installed

# The main job: baseline, SE and SB under the quick protocol, tables and figures in results/compare-quick.
run: install
	$(VENV)/bin/sbattn compare --preset quick --data-dir $(DATA) $(FETCH)

# Both environments: the main suite on the tested CPU torch, then tests/interop (timm, FX feature extraction, the
# zoo) and the supported-range test on the newest torch with timm; then the built wheel, in a venv of its own.
test: test-main test-interop test-wheel

# mypy -p sbattn is one of its tests (tests/test_types.py), run beside the others
test-main: install
	$(PY) -m pytest -q

# For a working session, not CI: the main suite without torchrun, the GPU call's dry runs and the compiled modes
# (the slowest third); `make test` runs everything.
test-fast: install
	$(PY) -m pytest -q --ignore=tests/test_distributed.py --ignore=tests/test_gpu_script.py -k "not compile"

# How strong the suite is (docs/tests.md): the suite once under coverage, then each sampled defect against the
# tests that run its line. Hours on 2 cores; not part of `make test`.
MUTATION ?= build/mutation
mutate: install
	$(PY) -m pip install --quiet "coverage>=7.10" "pytest-cov>=6"
	$(PY) tests/mutation.py map . $(MUTATION)
	$(PY) tests/mutation.py run . $(MUTATION)
	$(PY) tests/mutation.py report $(MUTATION)

test-interop: install-interop
	$(INTEROP_PY) -m pytest -q tests/interop tests/test_supported_torch.py
	$(INTEROP_PY) -m pip install --quiet --no-deps --upgrade --target $(TIMM_OLDEST_DIR) timm==$(TIMM_OLDEST)
	SBATTN_TIMM_VERSION=$(TIMM_OLDEST) PYTHONPATH=$(TIMM_OLDEST_DIR) $(INTEROP_PY) -m pytest -q -p no:cacheprovider \
	    tests/interop/test_timm_models.py tests/interop/test_replace.py

# What pip users get: the sdist and the wheel built as pip builds them (isolated, setuptools from
# build-system.requires; the wheel from the sdist), their contents checked, the wheel (not -e) installed in a fresh
# venv, and there the import, the version, `sbattn --help`, `sbattn summary` and a hub entry, outside the checkout.
test-wheel:
	rm -rf $(WHEEL)
	$(PYTHON) -m venv $(WHEEL)/venv
	$(WHEEL_PY) -m pip install --quiet "$(TORCH)" build==1.6.1
	$(WHEEL_PY) -m build --outdir $(WHEEL)/dist . > $(WHEEL)/build.log 2>&1 || { tail -20 $(WHEEL)/build.log; exit 1; }
	$(WHEEL_PY) tests/wheel_check.py contents $(WHEEL)/dist
	$(WHEEL_PY) -m pip install --quiet $(WHEEL)/dist/*.whl
	cd $(WHEEL) && venv/bin/python -c 'import sbattn; print("sbattn", sbattn.__version__, "from", sbattn.__file__)'
	$(WHEEL_PY) tests/wheel_check.py installed $(WHEEL)/dist

bench: install
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/data.py

clean:
	rm -rf $(VENV) $(INTEROP) build dist *.egg-info
