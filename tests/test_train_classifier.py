"""train_classifier.py end to end on generated clips, with a tiny config."""
import json
import logging
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import train_classifier as tc
from conftest import ROOT, make_tone_dataset, tone

TINY = ["--sr", "8000", "--duration", "0.5", "--n-mels", "16", "--n-fft", "256", "--hop-length", "128",
        "--width", "8", "--batch-size", "8", "--workers", "1", "--ensemble", "1"]
CLASSES = ("low", "mid", "high")
FREQS = {"low": 200.0, "mid": 600.0, "high": 1800.0}
VALIDATED = ["--val-split", "0.25"]  # the default trains on every clip, with no validation to report


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three tone classes for training; a test folder with an answer key and two undecodable files."""
    root = tmp_path_factory.mktemp("data")
    make_tone_dataset(root / "train", classes=CLASSES, per_class=16)
    key = []
    for i in range(12):
        name = CLASSES[i % 3]
        tone(root / "test" / f"{i + 1}.wav", freq=FREQS[name] * (1.03 + 0.02 * (i % 4)), sr=11025,
             seconds=0.4, channels=1 + i % 2)
        key.append((f"{i + 1}.wav", name))
    (root / "test" / "13.wav").write_bytes(b"")
    (root / "test" / "14.wav").write_bytes(b"RIFF\x00\x00garbage")
    (root / "test" / "._1.wav").write_bytes(bytes(100))
    pd.DataFrame(key, columns=["ID", "Class"]).to_csv(root / "key.csv", index=False)
    return root


def run(data, out, *extra):
    return tc.main(["--train-dir", str(data / "train"), "--test-dir", str(data / "test"), "--out", str(out),
                    *TINY, *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert run(data, out, "--epochs", "30", "--seed", "1", *VALIDATED) == 0
    return out


def test_submission_has_a_row_for_every_test_file(trained):
    sub = pd.read_csv(trained / "submission_cnn_v2.csv", dtype=str)
    assert list(sub.columns) == ["ID", "Class"]
    assert list(sub.ID) == [f"{i}.wav" for i in range(1, 15)]  # natural order; ._ file ignored
    assert set(sub.Class) <= set(CLASSES)


def test_undecodable_test_files_get_the_most_frequent_class(trained):
    sub = pd.read_csv(trained / "submission_cnn_v2.csv", dtype=str).set_index("ID")
    assert sub.loc["13.wav", "Class"] == sub.loc["14.wav", "Class"] == "high"  # ties: first class in order


def test_class_probabilities_of_the_test_files_match_the_submission(trained):
    sub = pd.read_csv(trained / "submission_cnn_v2.csv", dtype=str)
    probs = pd.read_csv(trained / "test_probabilities.csv", dtype={"ID": str})
    assert list(probs.columns) == ["ID", *sorted(CLASSES)] and list(probs.ID) == list(sub.ID)
    decoded = probs.set_index("ID").drop(["13.wav", "14.wav"])
    assert np.allclose(decoded.sum(axis=1), 1.0, atol=1e-4)
    assert list(decoded.idxmax(axis=1)) == list(sub.set_index("ID").Class.drop(["13.wav", "14.wav"]))
    assert probs.set_index("ID").loc[["13.wav", "14.wav"]].isna().all().all()  # undecodable: no probabilities


def test_class_probabilities_of_the_validation_clips_match_the_report(data, trained):
    probs = pd.read_csv(trained / "validation_probabilities.csv")
    meta = json.loads((trained / "classifier.json").read_text())
    assert list(probs.columns) == ["file", "Class", *sorted(CLASSES)]
    assert sorted(str((data / "train" / f).resolve()) for f in probs.file) == sorted(meta["validation_files"])
    assert all(f.split("/")[0] == c for f, c in zip(probs.file, probs.Class))  # the true class: its folder
    accuracy = (probs[sorted(CLASSES)].idxmax(axis=1) == probs.Class).mean()
    assert accuracy == pytest.approx(meta["val_accuracy"])


def test_a_learnable_set_is_learned(data, trained):
    sub = pd.read_csv(trained / "submission_cnn_v2.csv", dtype=str).set_index("ID")["Class"]
    key = pd.read_csv(data / "key.csv", dtype=str)
    accuracy = (key.ID.map(sub) == key.Class).mean()
    assert accuracy >= 0.75, accuracy  # chance is 1/3


def test_all_outputs_are_written_and_no_temporary_files_remain(trained):
    for name in ["classifier.keras", "classifier.json", "history.csv", "training_curves.png",
                 "confusion_matrix.png", "classification_report.txt", "submission_cnn_v2.csv"]:
        assert (trained / name).stat().st_size > 0, name
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]
    assert not (trained / "train_state").exists()
    history = pd.read_csv(trained / "history.csv")
    assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(history.columns)
    assert "low" in (trained / "classification_report.txt").read_text()


def test_saved_model_predicts_the_same_submission(data, trained, tmp_path):
    assert run(data, tmp_path, "--model", str(trained / "classifier.keras")) == 0
    assert (tmp_path / "submission_cnn_v2.csv").read_text() == (trained / "submission_cnn_v2.csv").read_text()


def test_same_seed_same_submission(data, trained, tmp_path):
    assert run(data, tmp_path, "--epochs", "30", "--seed", "1", *VALIDATED) == 0
    assert (tmp_path / "submission_cnn_v2.csv").read_text() == (trained / "submission_cnn_v2.csv").read_text()


def test_drop_extension_and_train_only(data, trained, tmp_path):
    assert run(data, tmp_path, "--model", str(trained / "classifier.keras"), "--drop-extension") == 0
    assert pd.read_csv(tmp_path / "submission_cnn_v2.csv", dtype=str).ID.tolist()[:3] == ["1", "2", "3"]
    only = tmp_path / "train_only"
    assert run(data, only, "--epochs", "1", "--train-only") == 0
    assert (only / "classifier.keras").exists() and not (only / "submission_cnn_v2.csv").exists()


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train_classifier.py"), *TINY, *args],
                          capture_output=True, text=True, timeout=300)


def test_by_default_two_models_train_on_every_clip_and_no_validation_is_claimed(data, tmp_path, capsys):
    tiny_default_ensemble = TINY[:TINY.index("--ensemble")]
    assert tc.main(["--train-dir", str(data / "train"), "--test-dir", str(data / "test"), "--out", str(tmp_path),
                    *tiny_default_ensemble, "--epochs", "2", "--group-regex", "^(.+?)_"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("training on 48 clips, validating on 0") == 2
    assert "model 2 of 2" in captured.out
    assert "no validation: every clip trained the models (" in captured.out
    assert "--group-regex shapes the validation split, and there is none" in captured.err
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["validation_files"] == [] and "val_accuracy" not in meta
    assert pd.read_csv(tmp_path / "history.csv").filter(like="val_").isna().all().all()
    assert not (tmp_path / "confusion_matrix.png").exists() and not (tmp_path / "validation_probabilities.csv").exists()
    assert len(pd.read_csv(tmp_path / "submission_cnn_v2.csv")) == 14


def test_missing_test_folder_is_an_error_after_the_model_is_saved(data, tmp_path):
    res = run_cli("--train-dir", str(data / "train"), "--test-dir", str(tmp_path / "nope"),
                  "--out", str(tmp_path / "out"), "--epochs", "1")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: test folder")
    assert (tmp_path / "out" / "classifier.keras").exists()


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("one_class", "at least 2 classes"),
    ("all_broken", "at least 2 classes"),
])
def test_unusable_training_data_is_a_one_line_error(tmp_path, layout, message):
    train = tmp_path / "train"
    if layout == "one_class":
        tone(train / "only" / "a.wav")
        tone(train / "only" / "b.wav")
        (train / "other").mkdir()
        (train / "other" / "x.wav").write_bytes(b"")
    elif layout == "all_broken":
        for c in ("a", "b"):
            (train / c).mkdir(parents=True)
            (train / c / "x.wav").write_bytes(b"not audio at all")
            sf.write(train / c / "silent.wav", np.zeros(800), 8000)
    res = run_cli("--train-dir", str(train), "--out", str(tmp_path / "out"), "--epochs", "1")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last


def test_split_is_stratified_disjoint_and_keeps_recordings_together(tmp_path):
    from pathlib import Path
    y = np.repeat([0, 1, 2], 20)
    paths = [Path(f"{rec}-{i}.wav") for rec, i in zip(np.arange(60) // 4, range(60))]
    train, val = tc.split_train_val(y, paths, 0.25, None, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 60
    assert np.bincount(y[val]).tolist() == [5, 5, 5]
    train, val = tc.split_train_val(y, paths, 0.25, r"^(\d+)-", seed=0)
    recording = lambda idx: {paths[i].name.split("-")[0] for i in idx}  # noqa: E731
    assert not recording(train) & recording(val) and len(val) > 0


def test_interrupted_run_resumes_even_from_a_torn_backup(data, tmp_path):
    import time
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "train_classifier.py"), *TINY, "--train-dir", str(data / "train"),
           "--test-dir", str(data / "test"), "--out", str(out), "--epochs", "40", "--patience", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_state" / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # a few epochs in
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume" in err and "Traceback" not in err, err[-3000:]
    done_before = len(pd.read_csv(out / "train_state" / "history.csv"))
    assert 0 < done_before < 40, done_before
    # As if the run had been killed while writing its last backup: the one before it is used.
    latest = out / "train_state" / "backup" / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:1000])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming the interrupted run" in res.stdout
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == list(range(40))


def test_backups_are_written_after_the_first_epoch_then_every_few_seconds_and_when_stopping(tmp_path, monkeypatch):
    import types

    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    backup = tc.ThrottledBackupAndRestore(str(tmp_path / "backup"))
    interrupt = tc.FinishEpochOnInterrupt(backup)
    for callback in (backup, interrupt):
        callback.set_model(model)
        callback.on_train_begin()
    saved = []
    monkeypatch.setattr(backup, "_save_model", lambda: saved.append(backup._current_epoch))
    seconds = iter([0.0, 1.0, 2.0, tc.BACKUP_SECONDS + 0.5, tc.BACKUP_SECONDS + 1.0, tc.BACKUP_SECONDS + 1.5])
    monkeypatch.setattr(tc, "time", types.SimpleNamespace(monotonic=lambda: next(seconds, tc.BACKUP_SECONDS + 2)))
    try:
        for epoch in range(5):
            backup.on_epoch_end(epoch)
            interrupt.on_epoch_end(epoch)
        assert saved == [1, 4]  # epochs done at each backup: the first, then BACKUP_SECONDS later
        interrupt.request_stop(signal.SIGINT, None)  # Ctrl-C after the backup's turn in epoch 5 passed it by
        backup.on_epoch_end(5)
        with pytest.raises(KeyboardInterrupt):
            interrupt.on_epoch_end(5)
        assert saved == [1, 4, 6]
    finally:
        interrupt.on_train_end()  # the Ctrl-C handler it installed


@pytest.mark.parametrize("kind", ["lambda_payload", "not_a_model", "foreign_json", "unknown_mel_scale"])
def test_a_model_file_that_is_not_ours_is_refused_and_nothing_in_it_runs(data, trained, tmp_path, kind):
    import shutil

    import keras
    marker = tmp_path / "payload_ran"
    model = tmp_path / "classifier.keras"
    shutil.copy(trained / "classifier.json", tmp_path / "classifier.json")
    if kind == "lambda_payload":  # Keras would run this function's bytecode on load without safe mode
        inputs = keras.Input((16, 5))
        touch = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # the path inside the bytecode
        outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Lambda(touch)(inputs)))
        marker.unlink()  # building the model called it once, here, in the test
        keras.Model(inputs, outputs).save(model)
    elif kind == "not_a_model":
        model.write_text("hello")
    elif kind == "unknown_mel_scale":  # hand-edited: librosa would silently read it as Slaney's bands
        shutil.copy(trained / "classifier.keras", model)
        meta = json.loads((trained / "classifier.json").read_text())
        meta["features"]["mel_scale"] = "HTK"
        (tmp_path / "classifier.json").write_text(json.dumps(meta))
    else:
        shutil.copy(trained / "classifier.keras", model)
        (tmp_path / "classifier.json").write_text('{"some": "other file"}')
    res = run_cli("--model", str(model), "--test-dir", str(data / "test"), "--out", str(tmp_path / "out"))
    assert not marker.exists(), "the model file's code ran"
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is not a classifier" in last, last


def test_no_tensorflow_start_up_noise():
    res = run_cli("--help")
    assert res.returncode == 0
    assert "absl::InitializeLog" not in res.stderr and "oneDNN" not in res.stderr, res.stderr


def test_folds_train_an_ensemble_with_an_out_of_fold_report(data, tmp_path, capsys):

    import keras
    assert run(data, tmp_path, "--epochs", "3", "--folds", "3", "--schedule", "cosine") == 0
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["models"] == 3 and meta["validation_files"] == []
    history = pd.read_csv(tmp_path / "history.csv")
    assert sorted(history.fold.unique()) == [1, 2, 3] and len(history) == 9
    assert "learning_rate" not in capsys.readouterr().out  # ReduceLROnPlateau's log: not under the cosine schedule
    # Every training clip was validated once, by the member that did not train on it.
    report = (tmp_path / "classification_report.txt").read_text()
    assert f"{3 * 16}" in report.split("accuracy")[1].split("\n")[0]
    out_of_fold = pd.read_csv(tmp_path / "validation_probabilities.csv")
    assert len(out_of_fold) == out_of_fold.file.nunique() == 3 * 16
    model = keras.models.load_model(tmp_path / "classifier.keras", safe_mode=True)
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == ["cnn_0", "cnn_1", "cnn_2"]
    assert len(pd.read_csv(tmp_path / "submission_cnn_v2.csv")) == 14
    assert not (tmp_path / "train_state").exists()


def test_ensemble_members_each_get_their_own_random_split():
    from pathlib import Path
    y = np.repeat([0, 1, 2], 20)
    paths = [Path(f"{i}.wav") for i in range(60)]
    split = ["--seed", "3", "--val-split", "0.2"]
    single = tc.validation_splits(y, paths, tc.parse_args([*split, "--ensemble", "1"]), None)
    members = tc.validation_splits(y, paths, tc.parse_args([*split, "--ensemble", "3"]), None)
    assert len(single) == 1 and len(members) == 3
    np.testing.assert_array_equal(members[0][1], single[0][1])  # member 0 is the model --ensemble 1 trains
    for train, val in members:
        assert not set(train) & set(val) and len(train) + len(val) == 60
        assert np.bincount(y[val]).tolist() == [4, 4, 4]
    held_out = [set(val) for _, val in members]
    assert held_out[0] != held_out[1] != held_out[2]
    assert len(set.union(*held_out)) > 12  # between them, the members trained on clips each other held out


def test_an_ensemble_trains_members_from_different_seeds_and_predicts_with_their_average(data, tmp_path, capsys):

    import keras
    assert run(data, tmp_path, "--epochs", "3", "--ensemble", "2", *VALIDATED) == 0
    out = capsys.readouterr().out
    assert "model 1 of 2" in out and "model 2 of 2" in out and "each clip by a member that did not train on it" in out
    meta = json.loads((tmp_path / "classifier.json").read_text())
    assert meta["models"] == 2 and meta["validation_files"] == []
    assert sorted(pd.read_csv(tmp_path / "history.csv").model.unique()) == [1, 2]
    model = keras.models.load_model(tmp_path / "classifier.keras", safe_mode=True)
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert [m.name for m in members] == ["cnn_0", "cnn_1"]
    first_kernels = [next(w for w in m.weights if "kernel" in w.path).numpy() for m in members]
    assert not np.allclose(*first_kernels)
    x = np.random.default_rng(0).uniform(-80, -20, (4, *model.input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.mean([m.predict(x, verbose=0) for m in members], axis=0), atol=1e-5)
    assert len(pd.read_csv(tmp_path / "submission_cnn_v2.csv")) == 14


def test_folds_and_ensemble_together_are_a_one_line_error(data, tmp_path, capsys):
    assert tc.parse_args([]).ensemble == 2 and tc.parse_args(["--folds", "2"]).ensemble == 1  # defaults never clash
    assert run(data, tmp_path, "--epochs", "1", "--folds", "2", "--ensemble", "2") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --folds and --ensemble both train several models: choose one")


def test_clip_level_input_is_relative_to_the_peak_and_floored():
    import keras

    from cnn_model import build_cnn
    model = build_cnn(8, 6, 3, 0.0, 1.0, width=4, level="clip", top_db=30)
    normalisation = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    seen = keras.Model(model.inputs, normalisation.output)
    x = np.random.default_rng(0).uniform(-100, -20, (2, 8, 6)).astype(np.float32)
    x[1] = x[0] + 20  # the same clip recorded 20 dB louder
    out = seen.predict(x, verbose=0)[..., 0]
    np.testing.assert_allclose(out[0], np.maximum(x[0] - x[0].max(), -30), atol=1e-4)
    np.testing.assert_allclose(out[1], out[0], atol=1e-4)


def test_an_interrupted_run_of_folds_is_kept_for_resuming(tmp_path):
    state = tmp_path / "train_state"
    settings = {"folds": 3, "seed": 0}
    assert tc.prepare_state_dir(state, settings) is False
    (state / "fold_0").mkdir()
    (state / "fold_0" / "finished.keras").write_bytes(b"model")
    assert tc.prepare_state_dir(state, settings) is True
    assert (state / "fold_0" / "finished.keras").exists()
    assert tc.prepare_state_dir(state, {**settings, "seed": 1}) is False  # other settings: afresh
    assert not (state / "fold_0").exists()


def test_test_time_augmentation_averages_the_clip_and_its_augmented_copies(data, trained):
    model, meta = tc.load_saved_model(trained / "classifier.keras")
    cfg = tc.ad.FeatureConfig.from_dict(meta["features"])
    x = np.random.default_rng(0).uniform(-80, -10, (6, cfg.n_mels, cfg.n_frames)).astype(np.float32)
    rows = np.arange(6)
    plain = tc.predict_rows(model, x, rows, 4)
    same = tc.predict_rows(model, x, rows, 4, tc.SpecAugmenter(cfg, strength=0.0), copies=3)
    np.testing.assert_allclose(same, plain, atol=1e-6)  # copies that are not augmented change nothing
    tta = tc.predict_rows(model, x, rows, 4, tc.SpecAugmenter(cfg, strength=1.0), copies=3)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-4
    assert run(data, trained / "tta", "--model", str(trained / "classifier.keras"), "--tta", "3") == 0
    assert len(pd.read_csv(trained / "tta" / "submission_cnn_v2.csv")) == 14



def test_batch_norm_statistics_re_estimated_on_test_clips_normalise_them_layer_by_layer():
    import keras

    from cnn_model import build_cnn
    members = [build_cnn(8, 6, 3, -40.0, 100.0, width=4, blocks=2, name=f"cnn_{k}") for k in range(2)]
    model = tc.ensemble(members)
    kernels = [w.numpy().copy() for w in model.trainable_weights]
    x = np.random.default_rng(0).uniform(-60, 0, (70, 8, 6)).astype(np.float32)
    rows = np.arange(5, 70)  # the clips to predict; rows 0-4 are not among them
    # Three batches per layer, as a notes-sized training set gives: enough calls for TensorFlow to
    # warn of frequent retracing when each layer's graph counts against the same function.
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    tc.tf.get_logger().addHandler(handler)
    try:
        tc.set_batch_norm_statistics(model, tc.tf.data.Dataset.from_tensor_slices(x[rows]).batch(32))
    finally:
        tc.tf.get_logger().removeHandler(handler)
    assert not [w for w in warnings if "retracing" in w], warnings  # one graph per layer is by design
    for member in members:
        norms = [layer for layer in member.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(norms) == 4
        for bn in norms:  # each layer's statistics are those of its inputs as the adapted layers before make them
            seen = keras.Model(member.input, bn.input).predict(x[rows], verbose=0)
            np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-3)
            assert seen.var(axis=(0, 1, 2)).min() > 0
    for before, after in zip(kernels, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())  # only the statistics change


def test_batch_norm_statistics_hold_at_most_their_memory_budget_of_activations(monkeypatch):
    import keras

    from cnn_model import build_cnn
    model = build_cnn(8, 6, 3, -40.0, 100.0, width=4, blocks=2)
    x = np.random.default_rng(1).uniform(-60, 0, (70, 8, 6)).astype(np.float32)
    widest = 8 * 6 * 4 * 4  # the first block's activations of one clip, in bytes
    monkeypatch.setattr(tc, "BN_STATISTICS_BYTES", 20 * widest + widest // 2)
    tc.set_batch_norm_statistics(model, tc.tf.data.Dataset.from_tensor_slices(x).batch(16))
    for bn in [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        seen = keras.Model(model.input, bn.input).predict(x[:20], verbose=0)  # the first 20 clips, not all 70
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)


def test_batch_norm_statistics_stay_finite_under_mixed_precision():
    import keras

    from cnn_model import build_cnn
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:  # normalised inputs of about -600: their float16 squares overflow (float16 ends at 65504)
        model = build_cnn(8, 6, 3, 0.0, 0.01, width=4, blocks=2, level="dataset")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(2).uniform(-60, -50, (64, 8, 6)).astype(np.float32)
    tc.set_batch_norm_statistics(model, tc.tf.data.Dataset.from_tensor_slices(x).batch(32))
    for bn in [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        assert bn.input.dtype == "float16"
        seen = keras.Model(model.input, bn.input).predict(x, verbose=0).astype(np.float64)
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=(0, 1, 2)), rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axis=(0, 1, 2)), rtol=1e-2, atol=1e-2)


def test_training_ends_with_the_batch_norm_statistics_of_its_clips_under_the_final_weights(data, tmp_path):
    import keras

    # Unaugmented, 12 batches of 8 are exactly two passes over the 48 clips: the statistics are of every clip.
    assert run(data, tmp_path, "--epochs", "3", "--augment", "0", "--epoch-clips", "96", "--train-only") == 0
    model, meta = tc.load_saved_model(tmp_path / "classifier.keras")
    paths, _ = tc.ad.find_labelled_clips(data / "train")
    x = tc.ad.extract_features(paths, tc.ad.FeatureConfig.from_dict(meta["features"]), tmp_path / "cache").x
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in (norms[0], norms[-1]):
        seen = keras.Model(model.input, bn.input).predict(np.asarray(x), verbose=0)
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)


def test_test_batch_norm_statistics_need_enough_test_clips(data, trained, tmp_path, capsys, monkeypatch):
    assert run(data, tmp_path, "--model", str(trained / "classifier.keras"), "--test-bn", "test") == 0
    assert f"needs at least {tc.MIN_CLIPS_TO_ADAPT} test clips, not 12" in capsys.readouterr().err
    assert (tmp_path / "submission_cnn_v2.csv").read_text() == (trained / "submission_cnn_v2.csv").read_text()
    # With enough clips the statistics are the test clips', and the predictions still right.
    adapted, measure = [], tc.set_batch_norm_statistics

    def counted(model, clips):
        adapted.append(sum(len(batch) for batch in clips))
        measure(model, clips)
    monkeypatch.setattr(tc, "MIN_CLIPS_TO_ADAPT", 12)
    monkeypatch.setattr(tc, "set_batch_norm_statistics", counted)
    assert run(data, tmp_path / "adapted", "--model", str(trained / "classifier.keras"), "--test-bn", "test") == 0
    assert adapted == [12]  # the decodable test clips, once each
    sub = pd.read_csv(tmp_path / "adapted" / "submission_cnn_v2.csv", dtype=str).set_index("ID")["Class"]
    key = pd.read_csv(data / "key.csv", dtype=str)
    assert len(sub) == 14 and (key.ID.map(sub) == key.Class).mean() >= 0.75


def test_an_epoch_is_one_pass_but_never_fewer_than_the_minimum_of_steps():
    assert tc.steps_per_epoch(460, 0, 32) == 15  # the drums dev set: one pass, as before
    assert tc.steps_per_epoch(460, 960, 32) == 30  # --epoch-clips asks for more
    assert tc.steps_per_epoch(57, 0, 32) == tc.MIN_STEPS_PER_EPOCH  # one kit: 2 steps would stop before learning
    assert tc.steps_per_epoch(38, 0, 8) == tc.MIN_STEPS_PER_EPOCH


def test_the_cosine_schedule_warms_up_for_an_epoch_then_decays_to_zero_at_the_last_step():
    schedule = tc.learning_rate(tc.parse_args(["--schedule", "cosine", "--epochs", "30", "--lr", "0.002"]), steps=18)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == 0 and rate(9) == pytest.approx(1e-3) and rate(18) == pytest.approx(2e-3)
    assert rate(18) > rate(100) > rate(400) > rate(30 * 18 - 1) > 0
    assert rate(30 * 18) == pytest.approx(0, abs=1e-9)
    assert tc.learning_rate(tc.parse_args(["--lr", "0.002"]), steps=18) == 0.002  # the default: plateaus


def test_with_ema_the_saved_model_holds_the_moving_average_of_its_weights(data, tmp_path):
    import keras

    with pytest.raises(SystemExit):  # a decay of 1 would never move from the initial weights
        tc.parse_args(["--ema", "1"])
    assert run(data, tmp_path, "--epochs", "3", "--ema", "0.5", "--train-only") == 0  # 3 epochs of 8 steps
    model = keras.models.load_model(tmp_path / "classifier.keras", safe_mode=True)  # with its optimizer's state
    averages = model.optimizer._model_variables_moving_average
    assert model.optimizer.use_ema and len(averages) == len(model.trainable_variables)
    for weights, average in zip(model.trainable_variables, averages):
        np.testing.assert_allclose(weights.numpy(), average.numpy(), rtol=1e-6, atol=1e-7)


def test_the_moving_average_spans_at_most_a_tenth_of_a_short_run():
    assert tc.ema_decay(tc.parse_args(["--epochs", "30"]), steps=36) == 0.99  # the README's drums: unchanged
    assert tc.ema_decay(tc.parse_args(["--epochs", "10"]), steps=8) == 1 - 10 / 80
    assert tc.ema_decay(tc.parse_args(["--epochs", "1"]), steps=8) == 0.0  # too short to average: off
    assert tc.ema_decay(tc.parse_args(["--epochs", "30", "--ema", "0"]), steps=36) == 0.0
