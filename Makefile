# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
OUT := outputs
# CPU-friendly settings for the demo's short drum hits; the scripts' defaults serve real data on a GPU.
DEMO_FEATURES := --sr 16000 --duration 1.5 --n-mels 64 --n-fft 1024 --hop-length 256
DEMO_CGAN := --data-dir $(DEMO)/train --sr 16000 --duration 1.0 --n-mels 64 --width 16 --samples-per-class 20
STAMP := $(VENV)/.installed
# One model, and clips it never trains on: evaluate_generated.py's real reference line.
HELD_OUT := --val-split 0.2 --ensemble 1

.PHONY: demo untrained-gan test bench bench-accuracy bench-cgan results venv clean

# Rebuilt only when the requirements change; pip's per-package index warnings are noise here.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -c "import tensorflow, torch, torchaudio, librosa, soundfile, scipy, sklearn, pandas, matplotlib, tqdm, joblib, pytest"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) make_demo_data.py --out $(DEMO)
	$(PY) train_classifier.py --train-dir $(DEMO)/train --test-dir $(DEMO)/test --out $(OUT) \
		$(DEMO_FEATURES) --epochs 10 $(HELD_OUT)
	$(PY) score_submission.py $(OUT)/submission_cnn_v2.csv $(DEMO)/test_labels.csv
	$(PY) train_cgan.py $(DEMO_CGAN) --out $(OUT) --epochs 45 --sample-every 15
	$(PY) evaluate_generated.py --model $(OUT)/classifier.keras --generated $(OUT)/generated \
		--real-dir $(DEMO)/train --out $(OUT)

# The reference line below the demo's GAN: the same generator at its initial weights
# (one epoch at learning rate 0), scored the same way. Needs `make demo` first.
untrained-gan: $(STAMP)
	$(PY) train_cgan.py $(DEMO_CGAN) --out $(OUT)/untrained-gan --epochs 1 --lr 0
	$(PY) evaluate_generated.py --model $(OUT)/classifier.keras --generated $(OUT)/untrained-gan/generated \
		--real-dir $(DEMO)/train --out $(OUT)/untrained-gan

test: $(STAMP)
	$(PY) -m pytest

# Every benchmark, then the demo timed (into outputs/bench/); prints a table, writes bench/results.json.
bench: $(STAMP)
	$(PY) bench/run.py

# Test accuracy on real data sets (DATA: folders with train/, test/, answers.csv; @SECONDS sets
# --duration), ours beside the seed-style CNN and a linear model; merges rows into bench/accuracy.json.
# About 25 minutes for the two dev sets of ../shared/devsets/build_devsets.py on 2 cores.
DEVSETS := $(HOME)/.cache/audio-devsets
DATA ?= $(DEVSETS)/drums@2.0 $(DEVSETS)/instruments@1.0
bench-accuracy: $(STAMP)
	$(PY) bench/bench_accuracy.py $(DATA)

# The cGAN on real drums, scored by a classifier trained on them (about 8 min on 2 cores).
DRUMS ?= $(DEVSETS)/drums
bench-cgan: $(STAMP)
	$(PY) bench/bench_cgan.py $(DRUMS)

# docs/RESULTS.md and its pictures, from the last `make bench` (and `make bench-accuracy`).
results: $(STAMP)
	$(PY) bench/results_page.py

clean:
	rm -rf outputs/cache outputs/bench $(DEMO)
