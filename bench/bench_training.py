"""Benchmark: training throughput of the classifier (samples/s) and the cGAN (steps/s), for the record.

    python bench/bench_training.py classifier|cgan [--repeats 3]

Runs the scripts' own models, input pipeline and training step on generated
spectrograms at the demo's feature settings (as `make demo` passes them) and at
the scripts' defaults. The classifier trains
with its script's default model, batch size and augmentation (read from its
argument parser, so the rows follow the defaults); the cGAN with width 32 and
batch size 32. Each figure is the median over timed epochs, after a warm-up
epoch that pays for graph tracing and memory allocation.

At the demo settings, the classifier's rows also time the batch-norm statistics
it measures after training (clips/s), beside measuring each layer from the
input, as it did before it kept each layer's inputs for the next.
"""
import importlib
import statistics
import time

import numpy as np

from common import demo_arguments, parser, report, row
import audio_data as ad

BATCH = 32  # the cGAN's
CLIPS = {  # model -> settings -> clips per timed epoch
    "classifier": {"demo": 192, "default": 96},
    "cgan": {"demo": 8 * BATCH, "default": 2 * BATCH},
}


def feature_config(model: str, settings: str) -> ad.FeatureConfig:
    """The spectrograms the script makes at `make demo`'s arguments ("demo") or at its defaults ("default")."""
    script = importlib.import_module(f"train_{model}")
    argv = demo_arguments(f"train_{model}.py") if settings == "demo" else []
    return script.feature_config(script.parse_args(argv))


def fake_log_mels(n, cfg, n_classes, rng):
    """dB spectrograms in the real range, with a class-dependent band, so training has something to learn."""
    x = rng.normal(-60, 10, (n, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    y = np.arange(n) % n_classes
    for c in range(n_classes):
        band = slice(c * cfg.n_mels // n_classes, (c + 1) * cfg.n_mels // n_classes)
        x[y == c, band] += 30
    return x, y


def classifier_epoch_seconds(cfg, d, steps, repeats):
    """Seconds per epoch of `steps` steps of train_classifier.py at its parsed arguments `d`."""
    import keras
    from cnn_model import build_cnn
    from spec_augment import SpecAugmenter
    from train_classifier import feature_stats, make_dataset
    x, y = fake_log_mels(steps * d.batch_size, cfg, 6, np.random.default_rng(0))
    rows = np.arange(len(x))
    mean, variance = feature_stats(x, rows, top_db=d.top_db if d.level == "clip" else None)
    model = build_cnn(cfg.n_mels, cfg.n_frames, 6, mean, variance, d.width, dropout=d.dropout, level=d.level,
                      top_db=d.top_db)
    model.compile(optimizer=keras.optimizers.Adam(d.lr), loss="categorical_crossentropy")
    augmenter = SpecAugmenter(cfg, strength=d.augment, kinds=d.augmentations, share=d.augment_share)
    ds = make_dataset(x, rows, np.eye(6, dtype=np.float32)[y], d.batch_size, augmenter, d.mixup)

    class EpochTimes(keras.callbacks.Callback):
        times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimes()
    model.fit(ds, steps_per_epoch=steps, epochs=1 + repeats, callbacks=[timer], verbose=0)
    return statistics.median(timer.times[1:])


def batch_norm_statistics_per_layer_from_input(model, clips):
    """The baseline: each batch-norm layer measured by running its clips from the input, layer after layer."""
    import functools

    import keras
    import tensorflow as tf
    from train_classifier import outputs_and_channel_sums
    for bn in [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        sums = tf.function(functools.partial(outputs_and_channel_sums, keras.Model(model.input, bn.input)),
                           input_signature=[tf.TensorSpec(model.input.shape, tf.float32)])
        n, total, total_sq = 0, 0.0, 0.0
        for batch in clips:
            _, positions, s, s2 = sums(batch)
            n, total, total_sq = n + int(positions), total + np.asarray(s, np.float64), total_sq + np.asarray(s2, np.float64)
        bn.moving_mean.assign(total / n)
        bn.moving_variance.assign(np.maximum(total_sq / n - (total / n) ** 2, 0.0))


def batch_norm_statistics_rates(cfg, d, n_clips, repeats):
    """Clips/s of train_classifier.py's batch-norm statistics and of the per-layer baseline (median of pairs),
    and the largest difference between the statistics the two set."""
    import keras
    import tensorflow as tf
    from cnn_model import build_cnn
    from common import paired_seconds
    from train_classifier import set_batch_norm_statistics
    x, _ = fake_log_mels(n_clips, cfg, 6, np.random.default_rng(0))
    model = build_cnn(cfg.n_mels, cfg.n_frames, 6, -60.0, 100.0, d.width, dropout=d.dropout, level=d.level, top_db=d.top_db)
    clips = tf.data.Dataset.from_tensor_slices(x).batch(256)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]

    def statistics_set_by(method):
        method(model, clips)
        return np.concatenate([w.numpy() for bn in norms for w in (bn.moving_mean, bn.moving_variance)])

    base_s, ours_s, speedup, base_stats, ours_stats = paired_seconds(
        lambda: statistics_set_by(batch_norm_statistics_per_layer_from_input),
        lambda: statistics_set_by(set_batch_norm_statistics), repeats)
    return n_clips / ours_s, n_clips / base_s, speedup, float(np.abs(ours_stats - base_stats).max())


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
    p.add_argument("model", choices=sorted(CLIPS))
    p.add_argument("--bn-clips", type=int, default=256, help="clips whose batch-norm statistics are measured")
    args = p.parse_args()
    if args.model == "classifier":
        import train_classifier
        d = train_classifier.parse_args([])
    rows = []
    for name, clips in CLIPS[args.model].items():
        cfg = feature_config(args.model, name)
        shape = f"{cfg.n_mels}x{cfg.n_frames}"
        if args.model == "classifier":
            steps = clips // d.batch_size
            rate = steps * d.batch_size / classifier_epoch_seconds(cfg, d, steps, args.repeats)
            augmentation = (f"augmentation {d.augment:g} ({' '.join(d.augmentations)}) on {d.augment_share:.0%} of clips"
                            if d.augment > 0 else "no augmentation") + (f", mixup {d.mixup:g}" if d.mixup > 0 else "")
            rows.append(row(f"classifier training, {name} settings", rate, "samples/s",
                            detail=f"input {shape}, width {d.width}, batch {d.batch_size}, {augmentation}"))
            if name == "demo":  # the ratio was the same at the defaults (2.9x against 3.1x, 512 clips)
                ours, base, speedup, difference = batch_norm_statistics_rates(cfg, d, args.bn_clips, args.repeats)
                rows.append(row("classifier batch-norm statistics after training, demo settings", ours, "clips/s",
                                baseline=base, ratio=speedup, statistics_max_difference=difference,
                                detail=f"input {shape}, {args.bn_clips} clips; baseline: each layer measured from "
                                       f"the input; statistics differ by at most {difference:.1g}"))
        else:
            steps = clips // BATCH
            rate = steps / cgan_epoch_seconds(cfg, steps, args.repeats)
            rows.append(row(f"cGAN training, {name} settings", rate, "steps/s",
                            detail=f"spectrograms {shape}, width 32, batch {BATCH}, hinge + mode-seeking, D augmentation"))
    report(args, rows)


if __name__ == "__main__":
    main()
