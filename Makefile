# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
OUT := outputs
# CPU-friendly settings for the demo's short drum hits; the scripts' defaults serve real data on a GPU.
DEMO_FEATURES := --sr 16000 --duration 1.5 --n-mels 64 --n-fft 1024 --hop-length 256
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean

# Rebuilt only when the requirements change; pip's per-package index warnings are noise here.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import tensorflow, torch, torchaudio, librosa, soundfile, scipy, sklearn, pandas, matplotlib, tqdm, pytest"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) make_demo_data.py --out $(DEMO)
	$(PY) train_classifier.py --train-dir $(DEMO)/train --test-dir $(DEMO)/test --out $(OUT) \
		$(DEMO_FEATURES) --epochs 15
	$(PY) score_submission.py $(OUT)/submission_cnn_v2.csv $(DEMO)/test_labels.csv
	$(PY) train_cgan.py --data-dir $(DEMO)/train --out $(OUT) --sr 16000 --duration 1.0 --n-mels 64 \
		--epochs 60 --width 16 --samples-per-class 5 --sample-every 20
	$(PY) evaluate_generated.py --model $(OUT)/classifier.keras --generated $(OUT)/generated \
		--real-dir $(DEMO)/train --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_augment.py

clean:
	rm -rf outputs/cache $(DEMO)
