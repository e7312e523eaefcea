import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The scripts never load both frameworks in one process; this test run does. PyTorch
# imports triton (through torch._dynamo) the first time an optimizer is built, and
# importing triton after TensorFlow segfaults (clashing native libraries), while the
# other order works. So the PyTorch side is loaded first, before any test imports
# TensorFlow.
import torch._dynamo  # noqa: E402,F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tone(path, freq=440.0, sr=16000, seconds=1.0, channels=1, subtype="PCM_16", amp=0.5):
    """Write a sine (plus a little noise, so no two clips are identical) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    y = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels > 1:
        y = np.repeat(y[:, None], channels, axis=1)
    sf.write(path, y.astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture
def write_tone():
    return tone


def make_tone_dataset(root, classes=("low", "high"), per_class=6, seconds=0.5, sr=16000):
    """A learnable labelled set: each class is a tone band, in mixed formats."""
    freqs = {name: 200.0 * 3**i for i, name in enumerate(classes)}
    formats = [(16000, 1, "PCM_16"), (22050, 2, "PCM_24"), (44100, 1, "FLOAT"), (8000, 1, "PCM_U8")]
    for name in classes:
        for i in range(per_class):
            fsr, ch, st = formats[i % len(formats)]
            tone(Path(root) / name / f"{name}_{i}.wav", freq=freqs[name] * (1 + 0.05 * i),
                 sr=fsr, seconds=seconds * (0.6 + 0.2 * (i % 4)), channels=ch, subtype=st)
    return Path(root)


def dead_pid() -> str:
    """The process id of a process that has ended: what a killed run leaves in its temporaries' names."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
