"""Benchmark: training throughput of the classifier (samples/s) and the cGAN (steps/s), for the record.

    python bench/bench_training.py classifier|cgan [--repeats 3]

Runs the scripts' own models, input pipeline and training step on generated
spectrograms at the demo's feature settings (16 kHz, 64 mels; 1.5 s for the
classifier, 1 s for the cGAN) and at the scripts' defaults, with their default
widths and batch size 32. Each figure is the median over timed epochs, after a
warm-up epoch that pays for graph tracing and memory allocation.
"""
import statistics
import time

import numpy as np

from common import parser, report, row
import audio_data as ad

BATCH = 32
SETTINGS = {  # name -> (feature settings, steps per timed epoch)
    "classifier": {"demo": (dict(sr=16000, duration=1.5, n_mels=64, n_fft=1024, hop_length=256), 6),
                   "default": (dict(hop_length=1024), 3)},  # train_classifier.py's defaults
    "cgan": {"demo": (dict(sr=16000, duration=1.0, n_mels=64, n_fft=1024, hop_length=256), 8),
             "default": (dict(sr=22050, duration=2.0, n_mels=128, n_fft=1024, hop_length=256), 3)},
}


def fake_log_mels(n, cfg, n_classes, rng):
    """dB spectrograms in the real range, with a class-dependent band, so training has something to learn."""
    x = rng.normal(-60, 10, (n, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    y = np.arange(n) % n_classes
    for c in range(n_classes):
        band = slice(c * cfg.n_mels // n_classes, (c + 1) * cfg.n_mels // n_classes)
        x[y == c, band] += 30
    return x, y


def classifier_epoch_seconds(cfg, steps, repeats):
    import keras
    from cnn_model import build_cnn
    from spec_augment import SpecAugmenter
    from train_classifier import make_dataset
    x, y = fake_log_mels(steps * BATCH, cfg, 6, np.random.default_rng(0))
    model = build_cnn(cfg.n_mels, cfg.n_frames, 6, float(x.mean()), float(x.var()), width=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    ds = make_dataset(x, np.arange(len(x)), np.eye(6, dtype=np.float32)[y], BATCH, SpecAugmenter(cfg), 0.2)

    class EpochTimes(keras.callbacks.Callback):
        times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimes()
    model.fit(ds, steps_per_epoch=steps, epochs=1 + repeats, callbacks=[timer], verbose=0)
    return statistics.median(timer.times[1:])


def cgan_epoch_seconds(cfg, steps, repeats):
    import torch
    import train_cgan
    torch.manual_seed(0)
    meta = {"classes": list("abcdef"), "features": cfg.to_dict(), "model": {"latent_dim": 128, "width": 32, "ema": 0.999}}
    G, D, ema = train_cgan.build_models(meta, torch.device("cpu"))
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.0, 0.9)) for m in (G, D))
    x, y = fake_log_mels(BATCH, cfg, 6, np.random.default_rng(0))
    real, labels = torch.from_numpy(x / 50 + 1)[:, None].clamp(-1, 1), torch.from_numpy(y)
    augment = train_cgan.AugmentForD(0.5, {"top_db": 0.0, "range_db": train_cgan.DYNAMIC_RANGE_DB}, cfg.n_mels)
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        for _ in range(steps):
            train_cgan.train_step(G, D, ema, opt_g, opt_d, real, labels, torch.randn(BATCH, 128),
                                  torch.randn(BATCH // 2, 128), "hinge", 0.1, augment)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    p = parser(__doc__)
    p.add_argument("model", choices=sorted(SETTINGS))
    args = p.parse_args()
    rows = []
    for name, (settings, steps) in SETTINGS[args.model].items():
        cfg = ad.FeatureConfig(**settings)
        shape = f"{cfg.n_mels}x{cfg.n_frames}"
        if args.model == "classifier":
            rate = steps * BATCH / classifier_epoch_seconds(cfg, steps, args.repeats)
            rows.append(row(f"classifier training, {name} settings", rate, "samples/s",
                            detail=f"input {shape}, width 16, batch {BATCH}, augmentation and mixup on"))
        else:
            rate = steps / cgan_epoch_seconds(cfg, steps, args.repeats)
            rows.append(row(f"cGAN training, {name} settings", rate, "steps/s",
                            detail=f"spectrograms {shape}, width 32, batch {BATCH}, hinge + mode-seeking, D augmentation"))
    report(args, rows)


if __name__ == "__main__":
    main()
