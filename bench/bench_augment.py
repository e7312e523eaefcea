"""Benchmark: augmented log-mel features, ours vs the seed-style per-clip librosa loop.

    python bench/bench_augment.py [--clips 32] [--copies 1 4 16] [--repeats 3]

Both sides decode every clip once and produce `copies` augmented log-mel
spectrograms per clip (pitch shift and speed change, as the seed does); training
makes one augmented copy per clip per epoch, so `copies` stands for epochs:

- seed:  librosa.load -> effects.pitch_shift -> effects.time_stretch -> feature.melspectrogram, clip by clip;
- ours:  audio_data.extract_features (parallel decode + log-mel) -> SpecAugmenter on whole batches.

Prints, for each copy count, the median time of each over the repeats and their ratio.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import audio_data as ad  # noqa: E402
import make_demo_data  # noqa: E402


def seed_style(paths, cfg, copies, rng):
    import librosa
    out = []
    for p in paths:
        y, _ = librosa.load(p, sr=cfg.sr, duration=cfg.duration)
        for _ in range(copies):
            z = librosa.effects.pitch_shift(y=y, sr=cfg.sr, n_steps=rng.uniform(-2, 2))
            z = librosa.effects.time_stretch(y=z, rate=rng.uniform(0.87, 1.15))
            z = librosa.util.fix_length(z, size=cfg.n_samples)
            mel = librosa.feature.melspectrogram(y=z, sr=cfg.sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                                 n_mels=cfg.n_mels)
            out.append(librosa.power_to_db(mel))
    return out


def make_augment(cfg):
    """Traced once, as in training, where the tf.data pipeline is built once for the whole run."""
    import tensorflow as tf
    from spec_augment import SpecAugmenter
    return tf.function(SpecAugmenter(cfg).__call__)


def ours(paths, cfg, copies, augment, batch=64):
    import tensorflow as tf
    feats = ad.extract_features(paths, cfg, cache_dir=None, desc="bench")
    out, step = [], 0
    for _ in range(copies):
        for start in range(0, len(paths), batch):
            out.append(augment(tf.constant(feats.x[start:start + batch]), tf.constant([0, step], tf.int64)).numpy())
            step += 1
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--copies", type=int, nargs="+", default=[1, 4, 16], help="augmented versions of each clip")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = ad.FeatureConfig()  # the scripts' defaults: 22.05 kHz, 4 s, 128 mels
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_clips(Path(tmp), args.clips, rng)
        augment = make_augment(cfg)
        ours(paths[:8], cfg, 1, augment)  # warm-up: imports and graph tracing are not what is measured
        seed_style(paths[:2], cfg, 1, rng)
        print(f"\n{args.clips} clips of the demo's kind, median of {args.repeats} runs, {ad.default_workers()} cores")
        print(f"{'copies':>6}{'seed s':>9}{'ours s':>9}{'seed spec/s':>13}{'ours spec/s':>13}{'speed-up':>10}")
        for copies in args.copies:
            seed_t = statistics.median(timed(seed_style, paths, cfg, copies, rng) for _ in range(args.repeats))
            ours_t = statistics.median(timed(ours, paths, cfg, copies, augment) for _ in range(args.repeats))
            n = args.clips * copies
            print(f"{copies:6d}{seed_t:9.2f}{ours_t:9.2f}{n / seed_t:13.1f}{n / ours_t:13.1f}{seed_t / ours_t:9.1f}x")
    print("goal: >= 10x at equal augmentation count")


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def write_clips(folder, n, rng):
    import soundfile as sf
    paths = []
    for i in range(n):
        y, sr, subtype = make_demo_data.render_clip(make_demo_data.CLASSES[i % len(make_demo_data.CLASSES)], rng)
        paths.append(folder / f"{i}.wav")
        sf.write(paths[-1], y, sr, subtype=subtype)
    return paths


if __name__ == "__main__":
    main()
