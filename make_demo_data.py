"""Build a small, deliberately messy demo data set of synthetic drum one-shots.

    python make_demo_data.py --out data/demo [--seed 0]

writes DIR/train/<class>/*.wav (labelled), DIR/test/*.wav (unlabelled, shuffled
names) and DIR/test_labels.csv (ID,Class: the answer key). The clips mimic what
real competition data looks like: four sample rates, mono and stereo, 16/24-bit
and float, lengths from 0.3 to 3 s, background noise, overlapping class
parameters (a low tom is close to a kick, an open hi-hat to a cymbal), plus the
debris real folders carry: a macOS `._` file, a `.DS_Store` and an empty .wav.
"""
import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

import audio_data as ad

CLASSES = ("clap", "cymbal", "hihat", "kick", "snare", "tom")
SAMPLE_RATES = (16000, 22050, 44100, 48000)
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


def coloured_noise(n, sr, rng, lo=20.0, hi=20000.0, alpha=0.0):
    """Noise with a 1/f^alpha power spectrum (0 white, 1 pink, 2 brown), band-limited to [lo, hi] Hz.

    Drawn directly in the frequency domain at a power-of-two length: one fast
    inverse FFT instead of two slow ones at awkward clip lengths.
    """
    n_fft = 1 << (n - 1).bit_length()
    f = np.fft.rfftfreq(n_fft, 1 / sr)
    gain = ((f >= lo) & (f <= min(hi, 0.48 * sr))) / np.maximum(f, 1.0) ** (alpha / 2)
    spectrum = gain * (rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f)))
    noise = np.fft.irfft(spectrum, n_fft)[:n]
    return noise / (np.abs(noise).max() + 1e-9)


def sweep(t, sr, f_start, f_end, rate):
    """Sine whose pitch glides exponentially from f_start to f_end, like a struck drum head."""
    freq = f_end + (f_start - f_end) * np.exp(-rate * t)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def metallic(t, base, rng):
    """Inharmonic square-wave cluster: the classic analogue hi-hat/cymbal source."""
    ratios = np.array([1.0, 1.342, 1.2312, 1.6532, 1.9523, 2.1523]) * rng.uniform(0.9, 1.1, 6)
    return sum(np.sign(np.sin(2 * np.pi * base * r * t + rng.uniform(0, 6.3))) for r in ratios) / 6


def drum(kind, sr, n, rng):
    t = np.arange(n) / sr
    env = lambda tau: np.exp(-t / tau)  # noqa: E731
    colour = rng.uniform(0.0, 1.5)
    if kind == "kick":
        f0 = rng.uniform(45, 85)
        y = sweep(t, sr, f0 * rng.uniform(2, 4), f0, rng.uniform(20, 50)) * env(rng.uniform(0.12, 0.5))
        y += 0.3 * coloured_noise(n, sr, rng, 1000, 6000, colour) * env(0.005)
    elif kind == "tom":
        f0 = rng.uniform(75, 240)
        y = sweep(t, sr, f0 * rng.uniform(1.1, 1.7), f0, rng.uniform(8, 20)) * env(rng.uniform(0.15, 0.6))
        y += 0.15 * coloured_noise(n, sr, rng, 500, 5000, colour) * env(0.01)
    elif kind == "snare":
        y = 0.6 * sweep(t, sr, rng.uniform(180, 300), rng.uniform(140, 220), 30) * env(rng.uniform(0.04, 0.12))
        y += rng.uniform(0.5, 1.0) * coloured_noise(n, sr, rng, rng.uniform(800, 2000), 9000, colour) * env(rng.uniform(0.08, 0.3))
    elif kind == "clap":
        y = np.zeros(n)
        band = coloured_noise(n, sr, rng, rng.uniform(700, 1300), rng.uniform(2500, 4500), colour)
        onset = 0.0
        for _ in range(rng.integers(3, 6)):
            y += band * np.exp(-np.clip(t - onset, 0, None) / 0.006) * (t >= onset)
            onset += rng.uniform(0.007, 0.016)
        y += 0.7 * band * np.exp(-np.clip(t - onset, 0, None) / rng.uniform(0.08, 0.3)) * (t >= onset)
    elif kind == "hihat":
        y = 0.4 * metallic(t, rng.uniform(300, 500), rng) + coloured_noise(n, sr, rng, rng.uniform(5000, 7000), 18000, colour)
        y *= env(rng.uniform(0.03, 0.35))
    elif kind == "cymbal":
        src = metallic(t, rng.uniform(250, 600), rng) + coloured_noise(n, sr, rng, 3000, 16000, colour)
        y = src * env(rng.uniform(0.3, 1.8))
    else:
        raise ValueError(kind)
    return y


def render_clip(kind, rng):
    """One clip in a random file format, with background noise, random onset and level."""
    sr = int(rng.choice(SAMPLE_RATES))
    n = int(rng.uniform(0.3, 3.0) * sr)
    offset = int(rng.uniform(0, 0.05) * sr)
    y = np.zeros(n)
    y[offset:] = drum(kind, sr, n - offset, rng)
    y /= np.abs(y).max() + 1e-9
    snr_db = rng.uniform(12, 40)
    y += 10 ** (-snr_db / 20) * coloured_noise(n, sr, rng, 20, 20000, rng.uniform(0, 2))
    y *= 10 ** (rng.uniform(-20, -1) / 20) / (np.abs(y).max() + 1e-9)
    if rng.random() < 0.4:  # stereo: a slightly different, delayed second channel
        delay = int(rng.integers(0, 40))
        right = np.concatenate([np.zeros(delay), y[: n - delay]]) * rng.uniform(0.6, 1.0)
        y = np.stack([y, right], axis=1)
    return y.astype(np.float32), sr, str(rng.choice(SUBTYPES))


MARKER = ".made_by_make_demo_data"


def build(out: Path, seed: int, train_per_class: int, test_per_class: int) -> None:
    """Write the data set into a temporary folder, then move it into place in one step."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        sys.exit(f"error: {out} exists and was not made by this script; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    ad.remove_stale_temporaries(out.parent)  # what a killed earlier build left
    tmp = Path(tempfile.mkdtemp(prefix=ad.temporary_prefix(out.name), dir=out.parent))
    try:
        write_clips(tmp, np.random.default_rng(seed), train_per_class, test_per_class)
        (tmp / MARKER).touch()
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_clips(out: Path, rng, train_per_class: int, test_per_class: int) -> None:
    for name in CLASSES:
        (out / "train" / name).mkdir(parents=True)
        for i in range(train_per_class):
            y, sr, subtype = render_clip(name, rng)
            ext = ".flac" if rng.random() < 0.1 and subtype != "FLOAT" else ".wav"
            sf.write(out / "train" / name / f"{name}_{i:03d}{ext}", y, sr, subtype=subtype)
    (out / "test").mkdir()
    test_kinds = [k for k in CLASSES for _ in range(test_per_class)]
    rng.shuffle(test_kinds)
    with open(out / "test_labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ID", "Class"])
        for i, kind in enumerate(test_kinds):
            y, sr, subtype = render_clip(kind, rng)
            sf.write(out / "test" / f"clip_{i:04d}.wav", y, sr, subtype=subtype)
            writer.writerow([f"clip_{i:04d}.wav", kind])
    # The debris of real folders, which every loader must shrug off.
    (out / "train" / "kick" / "._kick_000.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(rng.integers(0, 256, 4092, dtype=np.uint8)))
    (out / "test" / "._clip_0000.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    (out / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2040))
    (out / "train" / "snare" / "snare_empty.wav").write_bytes(b"")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="folder to (re)create")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--train-per-class", type=int, default=60, help="labelled clips per class")
    parser.add_argument("--test-per-class", type=int, default=12, help="unlabelled test clips per class")
    args = parser.parse_args()
    build(args.out, args.seed, args.train_per_class, args.test_per_class)
    n_train, n_test = len(CLASSES) * args.train_per_class, len(CLASSES) * args.test_per_class
    print(f"demo data: {n_train} training clips in {len(CLASSES)} classes in {args.out / 'train'}, "
          f"{n_test} test clips in {args.out / 'test'}, answer key {args.out / 'test_labels.csv'}")


if __name__ == "__main__":
    main()
