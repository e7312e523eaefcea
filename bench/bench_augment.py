"""Benchmark: augmented log-mel features, ours vs the seed-style per-clip librosa loop.

    python bench/bench_augment.py [--clips 12] [--copies 1 4 10] [--repeats 3]

Both sides decode every clip once and produce `copies` augmented log-mel
spectrograms per clip (pitch shift and speed change, as the seed does):

- seed:  librosa.load -> effects.pitch_shift -> effects.time_stretch -> feature.melspectrogram, clip by clip;
- ours:  audio_data.extract_features (decode + log-mel) -> SpecAugmenter on whole batches.

Training makes one augmented copy of each clip per epoch, so a training run of
E epochs is the E-copy row; the goal is judged at the demo's epochs (read from
the Makefile). The 1-copy row is shown too: there, decoding dominates both sides.
"""
import tempfile
from pathlib import Path

import numpy as np

from common import demo_epochs, paired_seconds, parser, report, row, write_clips
import audio_data as ad

GOAL = 10.0


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
    p = parser(__doc__)
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--copies", type=int, nargs="+", help="augmented versions of each clip (default: 1, 4 and "
                   "the demo's classifier epochs)")
    p.add_argument("--goal-copies", type=int, help="the row the goal is judged at (default: the demo's classifier "
                   "epochs)")
    args = p.parse_args()
    args.goal_copies = args.goal_copies or demo_epochs("train_classifier.py")
    args.copies = args.copies or [1, 4, args.goal_copies]
    cfg = ad.FeatureConfig()  # the scripts' defaults: 22.05 kHz, 4 s, 128 mels
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_clips(Path(tmp), args.clips)
        augment = make_augment(cfg)
        ours(paths[:8], cfg, 1, augment)  # warm-up: imports and graph tracing are not what is measured
        seed_style(paths[:2], cfg, 1, rng)
        for copies in args.copies:
            n = args.clips * copies
            seed_t, ours_t, speed_up, _, _ = paired_seconds(
                lambda: seed_style(paths, cfg, copies, rng), lambda: ours(paths, cfg, copies, augment), args.repeats)
            judged = copies == args.goal_copies
            rows.append(row(f"augmented log-mels, {copies} per clip", n / ours_t, "spectrograms/s", n / seed_t,
                            ratio=speed_up, goal=f">= {GOAL:g}x" if judged else None,
                            met=speed_up >= GOAL if judged else None,
                            detail=f"{args.clips} clips, 22.05 kHz, 4 s, 128 mels; baseline: seed-style librosa loop"))
    report(args, rows)


if __name__ == "__main__":
    main()
