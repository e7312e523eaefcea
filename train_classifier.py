"""Train CNNs on log-mel spectrograms of labelled clips, then predict a folder of test clips.

    python train_classifier.py --train-dir data/train --test-dir data/test

Training clips live in one folder per class (data/train/<class>/*.wav); test clips
in one folder (data/test/*.wav). Writes, to --out: submission_cnn_v2.csv (ID,Class,
one row for every test file), classifier.keras with classifier.json (classes and
feature settings: what --model needs to predict again), history.csv,
training_curves.png and, with a validation split, confusion_matrix.png and
classification_report.txt. By default two models train on every clip and predict
together (--ensemble, --val-split).

A killed run resumes where it stopped when the same command is run again.
"""
import argparse
import functools
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users

import audio_data as ad  # noqa: E402

with ad.native_info_logs_hidden():
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402
    from keras import layers  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, classification_report, f1_score  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split  # noqa: E402
from sklearn.utils.class_weight import compute_class_weight  # noqa: E402

from cnn_model import build_cnn  # noqa: E402
from spec_augment import AUGMENTATIONS, SpecAugmenter, mixup  # noqa: E402

SUBMISSION = "submission_cnn_v2.csv"
TEST_PROBABILITIES = "test_probabilities.csv"  # for blending runs, as Kaggle ensembles do
VALIDATION_PROBABILITIES = "validation_probabilities.csv"  # out of fold with --folds: for stacking
# All but pitch shift and speed change: see docs/RESULTS.md's ablation table.
DEFAULT_AUGMENTATIONS = [a for a in AUGMENTATIONS if a not in ("pitch", "speed")]
# Early stopping and learning-rate plateaus count epochs. On a few dozen clips an epoch
# was one or two steps, and both fired before the model had learned anything: trained
# on one drum kit (57 clips), it gave every test clip the same class.
MIN_STEPS_PER_EPOCH = 8
# Batch-norm statistics after training are measured on an epoch of training clips, or this many at most:
# a few thousand pin them down, more would only cost memory and time.
BN_STATISTICS_CLIPS = 2048
# ... and at most this much of one layer's activations (1,500 clips of 4 s at 128 mels, width 16).
BN_STATISTICS_BYTES = 2**30
# Fewer test clips than this give batch-norm statistics too noisy to predict with (--test-bn test).
MIN_CLIPS_TO_ADAPT = 50
# A killed run loses at most this much training (plus the epoch in progress): writing a backup takes
# about 50 ms however small the model, 4% of a run on a few hundred clips when done every epoch.
BACKUP_SECONDS = 30.0


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="A killed run resumes when the same command is run again.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--train-dir", default="data/train", help="one sub-folder of clips per class")
    g.add_argument("--test-dir", default="data/test", help="clips to predict (flat or nested)")
    g.add_argument("--out", default="outputs", help="folder for the submission, model and reports")
    g.add_argument("--model", help="predict only: a saved classifier.keras (its .json must sit beside it)")
    g.add_argument("--train-only", action="store_true", help="train and save the model, predict nothing")
    g.add_argument("--drop-extension", action="store_true", help="submission IDs without the file extension (1.wav -> 1)")
    g.add_argument("--group-regex", help="keep clips of one recording on one side of the validation split; "
                   "the regex's first group (or whole match) on the file name names the recording, "
                   r"e.g. '^(\d+)-' for UrbanSound8K names like 100032-3-0-0.wav")
    g.add_argument("--workers", type=int, default=None, help=ad.WORKERS_HELP)
    g = p.add_argument_group("features")
    g.add_argument("--sr", type=int, default=22050, help="sample rate every clip is resampled to")
    g.add_argument("--duration", type=float, default=4.0, help="seconds per clip: longer clips are cropped, shorter padded")
    g.add_argument("--n-mels", type=int, default=128, help="mel bands")
    g.add_argument("--n-fft", type=int, default=2048, help="STFT window length in samples")
    g.add_argument("--hop-length", type=int, default=1024,
                   help="STFT hop in samples (1024: 46 ms at 22.05 kHz, half the frames of 512 for two models' time)")
    g.add_argument("--fmin", type=float, default=0.0, help="lowest mel frequency (Hz)")
    g.add_argument("--fmax", type=float, default=None, help="highest mel frequency (Hz; default sr/2)")
    g.add_argument("--mel-scale", choices=ad.MEL_SCALES, default="htk",
                   help="mel band spacing: slaney is linear up to 1 kHz (about 50 Hz a band at 64 bands), "
                        "htk logarithmic from 700 Hz, with narrower low bands (about 30 Hz) that tell a kick "
                        "from a floor tom; htk beat slaney on drums from unheard kits (docs/RESULTS.md)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=60, help="most epochs; early stopping usually ends sooner")
    g.add_argument("--batch-size", type=int, default=16,
                   help="clips per step (16: twice the updates of 32 in the same epochs and CPU time; "
                   "better on instrument notes, see docs/RESULTS.md)")
    g.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (--schedule plateau) or peak (cosine)")
    g.add_argument("--ema", type=float, default=0.99, metavar="DECAY",
                   help="predict with the exponential moving average of the weights over the training steps (about "
                   "the last 1 / (1 - DECAY) of them); 0: with the weights of the best epoch. 0.99 beat 0 on every "
                   "real test set, over ten seeds (docs/RESULTS.md)")
    g.add_argument("--schedule", choices=["plateau", "cosine"], default="plateau",
                   help="plateau: --lr, halved whenever the validation loss (the training loss without validation) "
                   "stalls; cosine: one epoch of warm-up to --lr, then cosine decay to 0 at the last epoch "
                   "(steadier on instrument notes, weaker on drums: see docs/RESULTS.md)")
    g.add_argument("--patience", type=int, default=10, help="epochs without improvement of the validation loss "
                   "before stopping (with no validation and --schedule plateau: of the training loss)")
    g.add_argument("--val-split", type=float, default=0.0,
                   help="fraction held out for validation (stratified), e.g. 0.2; 0: every clip trains the model "
                   "(--folds K still gives an out-of-fold score)")
    g.add_argument("--ensemble", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="train N models from seeds --seed, --seed+1, ... (with --val-split, each on its own random "
                   "split) and predict with their average; 1 trains a single model in half the time "
                   "(default: 2, or 1 with --folds)")
    g.add_argument("--folds", type=int, default=1,
                   help="K > 1: train K models, each validated on another K-th of the clips (out-of-fold report), "
                   "and predict with their average")
    g.add_argument("--width", type=int, default=16,
                   help="filters of the first conv block (doubles per block); 16 gives 0.4M parameters, 32 gives 1.4M")
    g.add_argument("--dropout", type=float, default=0.1,
                   help="dropout of the last conv block and the head (earlier blocks get less)")
    g.add_argument("--level", choices=["clip", "dataset"], default="clip",
                   help="clip: each clip relative to its own peak (recording level ignored); dataset: absolute dB")
    g.add_argument("--top-db", type=float, default=80.0,
                   help="with --level clip: levels more than this far below a clip's peak are floored (0: none)")
    g.add_argument("--epoch-clips", type=int, default=0,
                   help="augmented clips drawn per epoch, at least one pass over the training clips "
                   f"(and {MIN_STEPS_PER_EPOCH} batches)")
    g.add_argument("--augment", type=float, default=0.25,
                   help="augmentation strength: 0 off, 1 the full ranges (pitch +-2 semitones, speed +-15%%, ...); "
                   "0.25 beat 0.5 on drums from unheard kits, on two test sets (docs/RESULTS.md)")
    g.add_argument("--augment-share", type=float, default=0.5,
                   help="share of the training clips augmented at each draw; the others train as they are")
    g.add_argument("--augmentations", nargs="*", choices=AUGMENTATIONS, default=DEFAULT_AUGMENTATIONS,
                   help="which augmentations to use (pitch shift moves a sound's spectral envelope too, speed "
                   "change its attack and decay times; both cost accuracy on real instrument notes; gain acts only with "
                   "--level dataset, as --level clip measures every clip from its own peak)")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha; 0 turns mixup off")
    g.add_argument("--tta", type=int, default=1,
                   help="test-time augmentation: average the predictions of the clip and TTA-1 augmented copies")
    g.add_argument("--test-bn", choices=["train", "test"], default="train",
                   help="batch-norm statistics to predict with: the training clips' (measured after training), or "
                   "those of the test clips (AdaBN, for test clips recorded with other instruments or equipment; "
                   f"needs at least {MIN_CLIPS_TO_ADAPT} of them, of every class)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same result (on the CPU)")
    g.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU (ignored on the CPU)")
    args = p.parse_args(argv)
    if not 0 <= args.augment_share <= 1:
        p.error(f"--augment-share is a share of the clips, between 0 and 1 (not {args.augment_share})")
    if not 0 <= args.ema < 1:
        p.error(f"--ema is the decay of a moving average, at least 0 and below 1 (not {args.ema})")
    if "ensemble" not in vars(args):
        args.ensemble = 1 if args.folds > 1 else 2
    return args


def feature_config(args) -> ad.FeatureConfig:
    return ad.FeatureConfig(sr=args.sr, duration=args.duration, n_fft=args.n_fft, hop_length=args.hop_length,
                            n_mels=args.n_mels, fmin=args.fmin, fmax=args.fmax, mel_scale=args.mel_scale)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def load_training_set(args, cfg, cache_dir):
    """Features of every usable training clip: (features, rows, labels, classes, paths)."""
    paths, labels = ad.find_labelled_clips(args.train_dir)
    feats = ad.extract_features(paths, cfg, cache_dir, desc="train", workers=args.workers)
    paths, labels, classes, rows = ad.keep_usable_classes(paths, labels, feats.ok)
    y = np.array([classes.index(name) for name in labels])
    return feats.x, rows, y, classes, paths


def recording_of(path: Path, pattern) -> str:
    m = pattern.search(path.name)
    if not m:
        return path.name
    return m.group(1) if m.groups() else m.group(0)


def split_train_val(y, paths, val_split, group_regex, seed, classes=None, quiet=False):
    """Stratified train/validation split, made before any augmentation so none can leak.

    With --group-regex, clips of one recording stay together on one side. Classes
    too small to be on both sides go to training only.
    """
    idx = np.arange(len(y))
    if val_split <= 0:
        return idx, idx[:0]
    if group_regex:
        groups = [recording_of(p, re.compile(group_regex)) for p in paths]
        folds = StratifiedGroupKFold(n_splits=max(2, round(1 / val_split)), shuffle=True, random_state=seed)
        try:
            train, val = next(folds.split(idx, y, groups))
        except ValueError as e:
            raise ad.DataError(f"cannot split by --group-regex: {e}") from None
        return train, val
    counts = np.bincount(y)
    rare = counts[y] < 2
    if not quiet:
        for c in np.flatnonzero((counts > 0) & (counts < 2)):
            ad.warn(f"class '{classes[c] if classes else c}' has a single clip: it is used for training only")
    n_classes = int((counts >= 2).sum())
    n_val = max(math.ceil(val_split * (~rare).sum()), n_classes)
    if (~rare).sum() - n_val < n_classes:
        if not quiet:
            ad.warn(f"too few clips ({len(y)}) for a validation split: training on all, without validation")
        return idx, idx[:0]
    train, val = train_test_split(idx[~rare], test_size=n_val, stratify=y[~rare], random_state=seed)
    return np.sort(np.r_[train, idx[rare]]), np.sort(val)


def validation_splits(y, paths, args, classes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs: one split, one per member with --ensemble N, or K stratified folds.

    With --val-split, an ensemble's members differ in their random splits as well
    as their initial weights: between them they learn from (almost) every clip.
    """
    if args.folds > 1 and args.ensemble > 1:
        raise ad.DataError("--folds and --ensemble both train several models: choose one")
    if args.group_regex and args.folds <= 1 and args.val_split <= 0:
        ad.warn("--group-regex shapes the validation split, and there is none: add --val-split 0.2 or --folds K")
    if args.folds <= 1:
        return [split_train_val(y, paths, args.val_split, args.group_regex, args.seed + k, classes,
                                quiet=k > 0)
                for k in range(max(1, args.ensemble))]
    groups = [recording_of(p, re.compile(args.group_regex)) for p in paths] if args.group_regex else None
    folds = (StratifiedGroupKFold if groups else StratifiedKFold)(args.folds, shuffle=True, random_state=args.seed)
    try:
        return list(folds.split(np.zeros(len(y)), y, groups))
    except ValueError as e:
        raise ad.DataError(f"cannot make {args.folds} folds: {e}") from None


def ensemble(models) -> keras.Model:
    """One model that averages the members' class probabilities: saved, loaded and used like one CNN."""
    inputs = keras.Input(models[0].input_shape[1:], name="log_mel_db")
    outputs = layers.Average(name="class_probs")([m(inputs) for m in models])
    return keras.Model(inputs, outputs, name="cnn_ensemble")


def steps_per_epoch(n_train: int, epoch_clips: int, batch: int) -> int:
    """One pass over the training clips, or epoch_clips if more, and never under MIN_STEPS_PER_EPOCH."""
    return max(MIN_STEPS_PER_EPOCH, math.ceil(max(n_train, epoch_clips) / batch))


def learning_rate(args, steps: int):
    """--lr, or under --schedule cosine a warm-up and cosine decay over all --epochs of `steps` steps.

    With nothing held out, the plateau schedule can only watch the augmented training
    loss; on instrument notes that falls slowly enough that the rate is seldom halved
    and training ends at its full rate, wherever that leaves the weights. The cosine
    schedule ends every run near 0: on the notes dev set that steadied the result
    across seeds, on drums it lost accuracy, so it is not the default.
    """
    if args.schedule == "plateau":
        return args.lr
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, (args.epochs - 1) * steps),
                                                 warmup_target=args.lr, warmup_steps=steps)


def ema_decay(args, steps: int) -> float:
    """--ema, lowered where needed so the average spans at most a tenth of the planned steps.

    Keras's moving average starts from the first step's weights with no warm-up: in a
    run of a few hundred steps at 0.99 they would keep a tenth of the say. The README's
    runs on a few hundred clips (30 epochs of 36 steps and more) keep 0.99.
    """
    return max(0.0, min(args.ema, 1 - 10 / (args.epochs * steps)))


def make_dataset(x, rows, y_onehot, batch_size, augmenter=None, mixup_alpha=0.0, seed=0):
    """Batches of (log-mel, one-hot) read by row from the memory-mapped features.

    Training batches (augmenter given) are shuffled and repeated endlessly, and
    each one is augmented with its own stateless seed: (seed, batch counter).
    """
    n_mels, n_frames = x.shape[1:]
    ds = tf.data.Dataset.from_tensor_slices((rows, y_onehot))
    if augmenter is not None:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size)

    def read(r, y):
        xb = tf.numpy_function(lambda r: np.asarray(x[r]), [r], tf.float32)
        return tf.ensure_shape(xb, (None, n_mels, n_frames)), y

    ds = ds.map(read)
    if augmenter is not None:
        def augment(batch, i):
            s = tf.stack([tf.constant(seed, tf.int64), i])
            xb, yb = batch
            return mixup(augmenter(xb, s), yb, s + 1, mixup_alpha)
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.counter()).map(augment)
    return ds.prefetch(tf.data.AUTOTUNE)


def log_mel_batches(x, rows, batch_size) -> tf.data.Dataset:
    """The given rows of the feature array in order, in batches, without labels: to predict or measure."""
    no_labels = np.zeros((len(rows), 1), np.float32)
    return make_dataset(x, rows, no_labels, batch_size).map(lambda xb, _: xb)


def predict_rows(model, x, rows, batch_size, augmenter=None, copies=1, seed=0):
    """Class probabilities for the given rows of the feature array.

    With copies > 1 (test-time augmentation), the mean over the clip itself and
    copies-1 augmented versions of it.
    """
    ds = log_mel_batches(x, rows, batch_size)
    probs = model.predict(ds, verbose=0)
    if augmenter is None or copies <= 1:
        return probs
    for copy in range(1, copies):
        draw = lambda i, xb: augmenter(xb, tf.stack([tf.constant(seed + copy, tf.int64), i]))  # noqa: E731
        probs += model.predict(ds.enumerate().map(draw), verbose=0)
    return probs / copies


def outputs_and_channel_sums(segment, batch):
    """What `segment` makes of `batch`, and its positions, sum and sum of squares per channel."""
    a = segment(batch, training=False)
    positions = tf.size(a) // tf.shape(a)[-1]  # per channel, as an integer: exact at any size
    wide = tf.cast(a, tf.float32)  # under --mixed-precision a float16 sum of squares overflows
    return a, positions, tf.reduce_sum(wide, [0, 1, 2]), tf.reduce_sum(tf.square(wide), [0, 1, 2])


def first_clips(batches: tf.data.Dataset, limit: int) -> list[np.ndarray]:
    """The first `limit` clips of a batched dataset, as a list of batches."""
    taken, n = [], 0
    for batch in batches:
        taken.append(np.asarray(batch)[: limit - n])
        n += len(taken[-1])
        if n >= limit:
            break
    return taken


def set_batch_norm_statistics(model, clips: tf.data.Dataset):
    """Set every batch-norm layer's statistics to those of its inputs over `clips` (batches of log-mels).

    Layer by layer, so each one sees its inputs as the layers before it, already
    set, make them (all at once, from the old statistics, heard notes scored 0.915
    against 0.955: seed 1, a scratch run). Two uses. After training: Keras's moving
    averages (momentum 0.9) follow the last few dozen batches and lag the weights
    that made them; measured over an epoch of training batches with the final
    weights they are exact ("precise BN": Wu & Johnson, 2021, "Rethinking 'Batch'
    in BatchNorm"). Before predicting, with --test-bn test: measured on the test
    clips themselves, which undoes much of the shift when those were recorded with
    other instruments or equipment than the training clips (AdaBN: Li et al., 2016).

    Each layer's inputs are kept to make the next layer's, so the clips pass through
    the network once, not once per layer; at most BN_STATISTICS_BYTES of them, which
    limits the clips measured only for long, finely resolved spectrograms.
    """
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)] or [model]  # an ensemble's CNNs
    for member in members:
        norms = [layer for layer in member.layers if isinstance(layer, layers.BatchNormalization)]
        widest = max(math.prod(bn.input.shape[1:]) * np.dtype(bn.input.dtype).itemsize for bn in norms)
        inputs = first_clips(clips, max(1, BN_STATISTICS_BYTES // widest))
        start = member.input
        for bn in norms:
            # A partial, not a closure: tf.function counts traces per code object, and one
            # closure traced once per layer would draw its "frequent retracing" warning.
            segment = tf.function(functools.partial(outputs_and_channel_sums, keras.Model(start, bn.input)),
                                  input_signature=[tf.TensorSpec(start.shape, start.dtype)])
            n, total, total_sq = 0, 0.0, 0.0
            for i, batch in enumerate(inputs):
                out, positions, s, s2 = segment(batch)
                inputs[i] = out.numpy()
                n += int(positions)
                total, total_sq = total + np.asarray(s, np.float64), total_sq + np.asarray(s2, np.float64)
            mean = total / n
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(np.maximum(total_sq / n - mean**2, 0.0))
            start = bn.input


def feature_stats(x, rows, top_db=None, chunk=512):
    """Mean and variance of the training features, in chunks: the memory map is never loaded whole.

    With top_db, of the features as the model sees them with level="clip": relative
    to each clip's peak, floored top_db below it (0: not floored).
    """
    total = total_sq = 0.0
    for start in range(0, len(rows), chunk):
        part = np.asarray(x[rows[start:start + chunk]], dtype=np.float64)
        if top_db is not None:
            part -= part.max(axis=(1, 2), keepdims=True)
            if top_db > 0:
                part = np.maximum(part, -top_db)
        total += part.sum()
        total_sq += np.square(part).sum()
    n = len(rows) * x.shape[1] * x.shape[2]
    mean = total / n
    return mean, max(total_sq / n - mean**2, 1e-6)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def prepare_state_dir(state: Path, run_settings: dict) -> bool:
    """Keep an interrupted run's state only if it was made with the same settings; True if resuming."""
    settings_file = state / "run.json"
    if state.exists():
        same = settings_file.exists() and json.loads(settings_file.read_text()) == run_settings
        progress = (state / "backup").exists() or any(state.glob("fold_*"))  # with --folds, one per fold
        if same and progress:
            print(f"resuming the interrupted run saved in {state}")
            return True
        if not same and progress:
            ad.warn(f"settings differ from the interrupted run in {state}: starting afresh")
        shutil.rmtree(state)
    state.mkdir(parents=True)
    settings_file.write_text(json.dumps(run_settings, indent=2))
    return False


class FinishEpochOnInterrupt(keras.callbacks.Callback):
    """First Ctrl-C: finish the epoch in progress and back it up, then stop; a second stops at once.

    An interrupt landing while the backup is written would tear it, and the resumed
    run would start from the one before. Must come after `backup`, which it asks to
    back up the stopping epoch if that epoch's turn did not.
    """

    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def on_train_begin(self, logs=None):
        self.requested = False
        self.previous_handler = signal.signal(signal.SIGINT, self.request_stop)

    def request_stop(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping once this epoch is finished and backed up (Ctrl-C again to stop now)",
              file=sys.stderr)

    def on_epoch_end(self, epoch, logs=None):
        if self.requested:
            if self.backup.backed_up_epoch != epoch:
                self.backup.back_up(epoch)
            signal.signal(signal.SIGINT, self.previous_handler)
            raise KeyboardInterrupt  # skips on_train_end, where the backup would be deleted

    def on_train_end(self, logs=None):
        signal.signal(signal.SIGINT, self.previous_handler)


class ThrottledBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore writing fewer backups: one after the first epoch, then one once
    BACKUP_SECONDS have passed since the last (and the one FinishEpochOnInterrupt asks for)."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, double_checkpoint=True)
        self.last_backup = None
        self.backed_up_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        if self.last_backup is None or time.monotonic() - self.last_backup >= BACKUP_SECONDS:
            self.back_up(epoch)

    def back_up(self, epoch):
        super().on_epoch_end(epoch)
        self.last_backup = time.monotonic()
        self.backed_up_epoch = epoch


def distribution_strategy():
    """MirroredStrategy over every GPU when there are several (or over logical CPU devices,
    if someone configured them), else TensorFlow's default single-device strategy."""
    for kind in ("GPU", "CPU"):
        devices = tf.config.list_logical_devices(kind)
        if len(devices) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def train(args, x, rows, y, classes, train_idx, val_idx, state: Path, name="cnn", seed=0):
    """One model; `seed` sets its initial weights and augmentation draws (each member of an ensemble its own)."""
    keras.utils.set_random_seed(seed)
    n_classes = len(classes)
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    mean, variance = feature_stats(x, rows[train_idx], top_db=args.top_db if args.level == "clip" else None)
    cfg = feature_config(args)
    strategy = distribution_strategy()
    # --batch-size clips per replica: with several GPUs each step sees that many times more clips
    # (fewer steps per epoch) at the same learning rate.
    batch = args.batch_size * strategy.num_replicas_in_sync
    steps = steps_per_epoch(len(train_idx), args.epoch_clips, batch)
    with strategy.scope():
        model = build_cnn(cfg.n_mels, cfg.n_frames, n_classes, mean, variance, args.width, dropout=args.dropout,
                          level=args.level, top_db=args.top_db, name=name)
        decay = ema_decay(args, steps)
        optimizer = keras.optimizers.Adam(learning_rate(args, steps), use_ema=decay > 0, ema_momentum=decay)
        model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])

    augmenter = SpecAugmenter(cfg, strength=args.augment, kinds=args.augmentations, share=args.augment_share)
    train_ds = make_dataset(x, rows[train_idx], onehot[train_idx], batch, augmenter, args.mixup, seed)
    has_val = len(val_idx) > 0
    val_ds = make_dataset(x, rows[val_idx], onehot[val_idx], batch) if has_val else None
    monitor = "val_loss" if has_val else "loss"

    counts = np.bincount(y[train_idx], minlength=n_classes)
    class_weight = None
    if counts.max() > 1.5 * max(counts.min(), 1):
        weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=y[train_idx])
        class_weight = dict(enumerate(weights))
        print(f"classes are unbalanced ({counts.min()} to {counts.max()} training clips): using class weights")

    # The log comes before the backup, so every epoch a backup holds is logged; a resumed run
    # repeats the epochs since its last backup, their rows deduplicated later.
    # Two backups: a run killed (not Ctrl-C'd) while one is written resumes from the other.
    backup = ThrottledBackupAndRestore(str(state / "backup"))
    callbacks = [keras.callbacks.CSVLogger(str(state / "history.csv"), append=True), backup]
    # Under the cosine schedule the training loss falls to the end by design: only validation stops early.
    if has_val or args.schedule == "plateau":
        # With a moving average, fit() ends by putting the average in (Keras's optimizer EMA):
        # the best epoch's weights are not put back over it.
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=args.patience,
                                                       restore_best_weights=decay == 0))
    if args.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                           patience=max(2, args.patience // 3), min_lr=1e-5))
    callbacks.append(FinishEpochOnInterrupt(backup))
    replicas = strategy.num_replicas_in_sync
    print(f"training on {len(train_idx)} clips, validating on {len(val_idx)}; "
          f"{model.count_params():,} parameters; up to {args.epochs} epochs"
          + (f"; {replicas} replicas ({type(strategy).__name__}), {batch} clips a step" if replicas > 1 else ""))
    model.fit(train_ds, steps_per_epoch=steps, epochs=args.epochs,
              validation_data=val_ds, callbacks=callbacks, class_weight=class_weight, shuffle=False,
              verbose=1 if sys.stdout.isatty() else 2)
    # Batch-norm statistics measured under the final weights: averaged weights need their own.
    # An epoch of training batches, augmented as in training, drawn once (each layer reads them again).
    clips = np.concatenate([xb for xb, _ in train_ds.take(min(steps, math.ceil(BN_STATISTICS_CLIPS / batch)))])
    set_batch_norm_statistics(model, tf.data.Dataset.from_tensor_slices(clips).batch(256))
    return model


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------

def plot_history(history: pd.DataFrame, path: Path, member: str):
    """Loss and accuracy per epoch, one pair of lines per value of history's column `member` ("model" or "fold")."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ["loss", "accuracy"]):
        for k, h in history.groupby(member):
            name = f" ({member} {k})" if history[member].nunique() > 1 else ""
            line, = ax.plot(h["epoch"] + 1, h[metric], label=f"training batches{name}")
            if f"val_{metric}" in h and h[f"val_{metric}"].notna().any():
                ax.plot(h["epoch"] + 1, h[f"val_{metric}"], "--", color=line.get_color(), label=f"validation{name}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    with ad.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_confusion(y, pred, classes, path, title, ylabel="true class", xlabel="predicted class"):
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=range(len(classes)), display_labels=classes,
                                            ax=ax, colorbar=False, xticks_rotation=45)
    ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
    fig.tight_layout()
    with ad.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def report_validation(y, probs, classes, paths, out: Path) -> dict:
    """Per-class precision/recall/F1, the confusion matrix and the class probabilities of the validation clips."""
    table = pd.DataFrame(probs, columns=classes)
    table.insert(0, "Class", np.array(classes, dtype=object)[y])
    table.insert(0, "file", paths)
    with ad.atomic_output(out / VALIDATION_PROBABILITIES) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    pred = probs.argmax(axis=1)
    text = classification_report(y, pred, labels=range(len(classes)), target_names=classes, digits=3, zero_division=0)
    with ad.atomic_output(out / "classification_report.txt") as tmp:
        tmp.write_text(text)
    plot_confusion(y, pred, classes, out / "confusion_matrix.png", title="validation")
    return {"val_accuracy": float((pred == y).mean()), "val_macro_f1": float(f1_score(y, pred, average="macro"))}


# ----------------------------------------------------------------------------
# Saving, loading and predicting
# ----------------------------------------------------------------------------

def save_model(model, meta: dict, out: Path) -> Path:
    with ad.atomic_output(out / "classifier.keras") as tmp:
        model.save(tmp)
    with ad.atomic_output(out / "classifier.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return out / "classifier.keras"


def load_saved_model(path: str):
    """A classifier saved by this script, and its settings; nothing in the files is run.

    Keras's safe mode refuses the one part of a .keras file that holds code (Lambda
    layers' pickled functions); whatever Keras refuses or cannot read is a one-line error.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if path.suffix != ".keras" or not path.exists() or not meta_path.exists():
        raise ad.DataError(f"--model needs a classifier.keras and its .json beside it, both written by a training "
                           f"run ({path}, {meta_path})")
    try:
        meta = json.loads(meta_path.read_text())
        ad.FeatureConfig.from_dict(meta["features"])
        if not meta["classes"] or len(meta["train_counts"]) != len(meta["classes"]):
            raise ValueError("classes and train_counts disagree")
    except Exception as e:
        raise ad.DataError(f"{meta_path} is not a classifier.json of this script ({ad.short_reason(e)})") from None
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as e:
        raise ad.DataError(f"{path} is not a classifier of this script ({ad.short_reason(e)})") from None
    if model.output_shape[-1] != len(meta["classes"]):
        raise ad.DataError(f"{path} predicts {model.output_shape[-1]} classes, {meta_path} names {len(meta['classes'])}")
    return model, meta


def natural_key(text: str):
    """Sort 2.wav before 10.wav."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def predict_folder(model, meta: dict, args, cache_dir) -> None:
    """Write the submission and the class probabilities: one row for every audio file in the test folder.

    A file that cannot be decoded still gets a row, with the most frequent
    training class (and no probabilities), and a warning naming it.
    """
    test_dir = Path(args.test_dir)
    if not test_dir.is_dir():
        raise ad.DataError(f"test folder {test_dir} does not exist")
    paths = ad.find_audio_files(test_dir)
    if not paths:
        raise ad.DataError(f"no audio files in test folder {test_dir}")
    cfg = ad.FeatureConfig.from_dict(meta["features"])
    feats = ad.extract_features(paths, cfg, cache_dir, desc="test", workers=args.workers)
    classes = meta["classes"]
    fallback = classes[int(np.argmax(meta["train_counts"]))]
    predicted = np.full(len(paths), fallback, dtype=object)
    probs = np.full((len(paths), len(classes)), np.nan, dtype=np.float32)
    ok_rows = np.flatnonzero(feats.ok)
    if args.test_bn == "test":
        if len(ok_rows) >= MIN_CLIPS_TO_ADAPT:
            set_batch_norm_statistics(model, log_mel_batches(feats.x, ok_rows, args.batch_size))
        else:
            ad.warn(f"--test-bn test needs at least {MIN_CLIPS_TO_ADAPT} test clips, not {len(ok_rows)}: "
                    "predicting with the training clips' batch-norm statistics")
    if len(ok_rows):
        augmenter = SpecAugmenter(cfg, strength=args.augment, kinds=args.augmentations) if args.tta > 1 else None
        probs[ok_rows] = predict_rows(model, feats.x, ok_rows, args.batch_size, augmenter, args.tta, args.seed)
        predicted[ok_rows] = np.array(classes, dtype=object)[probs[ok_rows].argmax(axis=1)]
    for i in sorted(feats.skipped):
        ad.warn(f"{paths[i]} could not be decoded: predicted the most frequent class '{fallback}'")
    ids = [p.relative_to(test_dir).as_posix() for p in paths]
    if args.drop_extension:
        ids = [str(Path(i).with_suffix("")) for i in ids]
    order = sorted(range(len(ids)), key=lambda i: natural_key(ids[i]))
    submission = pd.DataFrame({"ID": ids, "Class": predicted}).iloc[order]
    probabilities = pd.concat([submission.ID, pd.DataFrame(probs, columns=classes).iloc[order]], axis=1)
    with ad.atomic_output(Path(args.out) / TEST_PROBABILITIES) as tmp:
        probabilities.to_csv(tmp, index=False, float_format="%.6f")
    with ad.atomic_output(Path(args.out) / SUBMISSION) as tmp:
        submission.to_csv(tmp, index=False)
    print(f"wrote {Path(args.out) / SUBMISSION} and {TEST_PROBABILITIES}: {len(paths)} rows "
          f"({len(feats.skipped)} undecodable, given the fallback class)")


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def set_up_device(args):
    keras.utils.set_random_seed(args.seed)
    if tf.config.list_physical_devices("GPU"):
        if args.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        tf.config.experimental.enable_op_determinism()  # same seed, same submission on the CPU
        if args.mixed_precision:
            ad.warn("--mixed-precision needs a GPU; training in float32")


def run(args):
    start = time.time()
    out = Path(args.out)
    cache_dir = out / "cache"
    ad.remove_stale_temporaries(out, cache_dir)
    set_up_device(args)
    if args.model:
        model, meta = load_saved_model(args.model)
        predict_folder(model, meta, args, cache_dir)
        return

    cfg = feature_config(args)
    if not args.train_only and not Path(args.test_dir).is_dir():
        ad.warn(f"test folder {args.test_dir} does not exist: the model will be trained and saved, "
                f"but no submission written (use --train-only to train on purpose)")
    x, rows, y, classes, paths = load_training_set(args, cfg, cache_dir)
    splits = validation_splits(y, paths, args, classes)
    print(f"{len(y)} usable clips in {len(classes)} classes: {', '.join(classes)}")

    state = out / "train_state"
    settings = {k: v for k, v in vars(args).items() if k not in ("workers", "train_only", "test_dir", "drop_extension")}
    prepare_state_dir(state, {**settings, "features": cfg.to_dict(), "n_clips": len(y)})
    models, histories, val_probs = [], [], {}
    member = "fold" if args.folds > 1 else "model"  # what history.csv and the plot call each of several
    for k, (train_idx, val_idx) in enumerate(splits):
        fold_state = state / f"fold_{k}" if len(splits) > 1 else state
        finished = fold_state / "finished.keras"  # a resumed run skips the folds already done
        if finished.exists():
            model = keras.models.load_model(finished, safe_mode=True)
        else:
            if len(splits) > 1:
                print(f"{member} {k + 1} of {len(splits)}")
                fold_state.mkdir(exist_ok=True)
            model = train(args, x, rows, y, classes, train_idx, val_idx, fold_state, name=f"cnn_{k}", seed=args.seed + k)
            if len(splits) > 1:
                model.save(finished)
        models.append(model)
        history = pd.read_csv(fold_state / "history.csv").drop_duplicates("epoch", keep="last")
        histories.append(history.assign(**{member: k + 1}))
        if len(val_idx):
            val_probs.update(zip(val_idx, predict_rows(model, x, rows[val_idx], args.batch_size)))
    model = models[0] if len(models) == 1 else ensemble(models)

    history = pd.concat(histories, ignore_index=True)
    with ad.atomic_output(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    plot_history(history, out / "training_curves.png", member)
    val_idx = np.array(sorted(val_probs), dtype=int)
    scores = (report_validation(y[val_idx], np.array([val_probs[i] for i in val_idx]), classes,
                                  [Path(os.path.relpath(paths[i], args.train_dir)).as_posix() for i in val_idx], out)
              if len(val_idx) else {})
    meta = {"classes": classes, "features": cfg.to_dict(), "train_counts": np.bincount(y).tolist(),
            "epochs_run": int(history.groupby(member).size().max()), "models": len(models), **scores,
            # Clips the model never trained on: a fair reference for evaluate_generated.py (none for an
            # ensemble of folds, whose members together trained on every clip).
            "validation_files": sorted(str(paths[i].resolve()) for i in val_idx) if len(models) == 1 else []}
    model_path = save_model(model, meta, out)
    shutil.rmtree(state, ignore_errors=True)

    print(f"\nsaved {model_path} (+ classifier.json), history.csv, training_curves.png"
          + (f", confusion_matrix.png, classification_report.txt, {VALIDATION_PROBABILITIES}" if scores else "")
          + f" in {out}")
    if scores:
        held_out = " (out of fold)" if args.folds > 1 else " (each clip by a member that did not train on it)"
        print(f"validation{held_out if len(models) > 1 else ''}: accuracy {scores['val_accuracy']:.3f}, "
              f"macro F1 {scores['val_macro_f1']:.3f} on {len(val_idx)} clips")
    else:
        print(f"no validation: every clip trained the model{'s' if len(models) > 1 else ''} (--val-split 0.2, "
              "with --group-regex to hold out whole sources, or --folds K give a score)")
    if not args.train_only:
        predict_folder(model, meta, args, cache_dir)
    print(f"done in {time.time() - start:.0f} s")


def main(argv=None) -> int:
    return ad.run_script(run, parse_args(argv), interrupted_hint="run the same command again to resume training")


if __name__ == "__main__":
    sys.exit(main())
