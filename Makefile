# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

# Rebuilt only when the requirements change; pip's per-package index warnings are noise here.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import tensorflow, torch, torchaudio, librosa, soundfile, sklearn, pandas, matplotlib, tqdm, pytest"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) make_demo_data.py --out $(DEMO)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf outputs/cache $(DEMO)
