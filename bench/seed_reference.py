"""The two references the classifier is measured against, on the same train/ and test/ folders.

    python bench/seed_reference.py cnn    --train-dir D/train --test-dir D/test --out O --epochs 30 --duration 2.0
    python bench/seed_reference.py linear --train-dir D/train --test-dir D/test --out O --duration 2.0

`cnn` is the seed author's plain CNN as its write-up describes it, written here from
that description: `librosa.load` per file, a log-mel (dB relative to the clip's peak)
plus a pitch-shifted and a speed-changed copy of every clip, a random split of the
result, three Conv-BN-MaxPool blocks (32/64/128) -> Flatten -> Dense 256 -> Dropout
0.5, Adam, EarlyStopping and ReduceLROnPlateau. `linear` is logistic regression on
each clip's mel-band means and standard deviations. Both write OUT/submission.csv
(ID without the extension, Class), the answer key's format.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import audio_data as ad  # noqa: E402  (discovery only: the reference decodes with librosa.load)

SR, N_FFT, HOP = 22050, 2048, 512


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=["cnn", "linear"])
    p.add_argument("--train-dir", required=True)
    p.add_argument("--test-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--n-mels", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load(path, duration):
    """librosa.load at 22.05 kHz, padded or cropped: the seed's decoding, None if it fails."""
    try:
        y, _ = librosa.load(path, sr=SR, duration=duration)
    except Exception:
        return None
    return librosa.util.fix_length(y, size=int(SR * duration)) if len(y) else None


def log_mel(y, n_mels):
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=n_mels),
                               ref=np.max)


def with_copies(y, duration, rng):
    """The clip, a pitch-shifted copy and a speed-changed copy (the seed's augmentation)."""
    n = int(SR * duration)
    pitched = librosa.effects.pitch_shift(y, sr=SR, n_steps=float(rng.choice([-2, -1, 1, 2])))
    faster = librosa.util.fix_length(librosa.effects.time_stretch(y, rate=float(rng.uniform(0.8, 1.2))), size=n)
    return [y, pitched, faster]


def training_set(args, rng, copies: bool):
    paths, labels = ad.find_labelled_clips(args.train_dir)
    x, y = [], []
    for path, label in zip(paths, labels):
        wave = load(path, args.duration)
        if wave is None:
            continue
        for version in (with_copies(wave, args.duration, rng) if copies else [wave]):
            x.append(log_mel(version, args.n_mels))
            y.append(label)
    return np.stack(x), np.array(y)


def test_set(args):
    paths = ad.find_audio_files(args.test_dir)
    waves = [load(p, args.duration) for p in paths]
    ids = [p.relative_to(args.test_dir).with_suffix("").as_posix() for p in paths]
    return ids, waves


def predict_cnn(args, rng):
    import keras
    from keras import layers
    from sklearn.model_selection import train_test_split
    keras.utils.set_random_seed(args.seed)
    x, labels = training_set(args, rng, copies=True)
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    x_tr, x_val, y_tr, y_val = train_test_split(x[..., None], y, test_size=0.2, random_state=args.seed)
    model = keras.Sequential([keras.Input(x.shape[1:] + (1,))])
    for filters in (32, 64, 128):
        model.add(layers.Conv2D(filters, 3, padding="same", activation="relu"))
        model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D(2))
    model.add(layers.Flatten())
    model.add(layers.Dense(256, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(len(classes), activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=32, verbose=2,
              callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True),
                         keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=3)])
    ids, waves = test_set(args)
    ok = [i for i, w in enumerate(waves) if w is not None]
    pred = np.full(len(ids), classes[np.bincount(y).argmax()], dtype=object)
    probs = model.predict(np.stack([log_mel(waves[i], args.n_mels) for i in ok])[..., None], verbose=0)
    pred[ok] = np.array(classes, dtype=object)[probs.argmax(axis=1)]
    return ids, pred


def summary(mel_db):
    return np.concatenate([mel_db.mean(axis=-1), mel_db.std(axis=-1)], axis=-1)


def predict_linear(args, rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, labels = training_set(args, rng, copies=False)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    model.fit(summary(x), labels)
    ids, waves = test_set(args)
    ok = [i for i, w in enumerate(waves) if w is not None]
    pred = np.full(len(ids), pd.Series(labels).mode()[0], dtype=object)
    pred[ok] = model.predict(summary(np.stack([log_mel(waves[i], args.n_mels) for i in ok])))
    return ids, pred


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ids, pred = (predict_cnn if args.model == "cnn" else predict_linear)(args, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"ID": ids, "Class": pred}).to_csv(out / "submission.csv", index=False)
    print(f"wrote {out / 'submission.csv'}: {len(ids)} rows")


if __name__ == "__main__":
    main()
