# The two commands of README's Quickstart: `make report` and `make test`.
# Set-up is a stamp file: it reruns only when pyproject.toml or this Makefile changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bnspec-setup
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Keep framework thread pools to the 2 cores this project is sized for.
export OMP_NUM_THREADS ?= 1
export TF_NUM_INTRAOP_THREADS ?= 1
export TF_NUM_INTEROP_THREADS ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 3

# Converter families whose pins fight the main environment get their own (envs/NAME/.venv), made
# by envs/create.sh from envs/NAME/requirements.txt, constrained by the measured lock file.
CONV_ENVS := $(foreach e,torchvision jax2onnx tf2onnx nobuco onnx2tf,envs/$(e)/.venv/.bnspec-setup)

.PHONY: setup test lint mypy report clean

setup: $(STAMP) $(CONV_ENVS)

.SECONDEXPANSION:
envs/%/.venv/.bnspec-setup: $$(wildcard envs/$$*/requirements*.txt envs/$$*/python-version) envs/create.sh
	sh envs/create.sh $* $(PYTHON)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel: nothing later may pull a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	# tf-keras (Keras 2) declares the full `tensorflow` wheel; tensorflow-cpu provides it.
	$(PIP) --no-deps tf-keras==2.21.0
	$(PY) -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

# Lint needs the main environment only (not the converter environments). Both tools run, and it
# fails if either finds something.
LINT_PATHS := bnspec adapters conformance tests benchmarks
lint: $(STAMP)
	status=0; $(VENV)/bin/ruff check $(LINT_PATHS) || status=1; \
	$(MAKE) --no-print-directory mypy || status=1; exit $$status

# mypy checks bnspec, bnspec.adapters and bnspec.conformance under their import names, but the
# last two are folders mapped by setuptools' package-dir (adapters/, conformance/), which mypy
# cannot map. So a symlink tree build/mypy/bnspec is laid afresh (each entry of bnspec/, then
# adapters/ and conformance/ as its subpackages), mypy runs in build/mypy (explicit_package_bases:
# bnspec/... is the package), and its paths are mapped back to the checkout's folders. It uses
# .venv as it is (no set-up step, so that the pre-commit hook stays quick): `make lint` sets up first.
MYPY_TREE := build/mypy
mypy:
	@rm -rf $(MYPY_TREE)/bnspec && mkdir -p $(MYPY_TREE)/bnspec
	@for e in bnspec/*; do test "$${e##*/}" = __pycache__ || ln -s "$(CURDIR)/$$e" $(MYPY_TREE)/bnspec/; done
	@ln -s "$(CURDIR)/adapters" $(MYPY_TREE)/bnspec/adapters
	@ln -s "$(CURDIR)/conformance" $(MYPY_TREE)/bnspec/conformance
	@echo "mypy bnspec (with bnspec.adapters, bnspec.conformance) in $(MYPY_TREE)"
	@cd $(MYPY_TREE) && { "$(CURDIR)/$(PY)" -m mypy --config-file "$(CURDIR)/pyproject.toml" bnspec \
	  > mypy.out; status=$$?; sed -e 's#^bnspec/adapters/#adapters/#' \
	  -e 's#^bnspec/conformance/#conformance/#' mypy.out; exit $$status; }

report: setup
	# Exit 1 means a framework does not conform to its declared profile: that is a finding, reported
	# in reports/, not a failure of the report itself.
	$(PY) -m bnspec run --examples 2 --jobs 2 --out reports; test $$? -le 1
	$(PY) -m bnspec.reports README.md reports/summary.json

clean:
	rm -rf $(VENV) envs/*/.venv
