"""evaluate_generated.py: its metrics on known inputs, and end to end with a tiny real classifier."""
import json
import shutil

import numpy as np
import pytest

import evaluate_generated as ev
import train_classifier as tc
from conftest import make_tone_dataset, tone

TINY = ["--sr", "8000", "--duration", "0.5", "--n-mels", "16", "--n-fft", "256", "--hop-length", "128",
        "--width", "8", "--batch-size", "8", "--workers", "1", "--dropout", "0.1", "--mixup", "0", "--ensemble", "1"]
FREQS = {"high": 1800.0, "low": 200.0, "mid": 600.0}  # make_tone_dataset's bands for these classes


def test_inception_score_bounds():
    assert ev.inception_score(np.eye(4)) == pytest.approx(4.0, rel=1e-6)  # confident and even: the maximum
    assert ev.inception_score(np.tile([0.7, 0.2, 0.1], (10, 1))) == pytest.approx(1.0)  # all alike: the minimum


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 128))  # fewer clips than dimensions, as in practice
    b = rng.standard_normal((40, 128))
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)  # traces are ~128
    near, far = ev.frechet_distance(a, b), ev.frechet_distance(a, b + 3.0)
    assert far > near + 128 * 8  # the mean shift adds 128 * 3^2
    a2, b2 = rng.standard_normal((500, 2)), rng.standard_normal((500, 2)) * 2
    assert ev.frechet_distance(a2, b2) == pytest.approx(2 * (1 + 4 - 2 * 2), abs=0.3)  # closed form for N(0,I), N(0,4I)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_tone_dataset(root / "train", classes=("low", "mid", "high"), per_class=16)
    assert tc.main(["--train-dir", str(root / "train"), "--out", str(root / "out"), "--train-only",
                    "--epochs", "30", "--seed", "1", "--val-split", "0.25", *TINY]) == 0
    return root


def fake_generated(folder, mislabel=False, collapse=False):
    """Stand-in GAN outputs: tones in each class folder; mislabelled or all one sound on request."""
    names = list(FREQS)
    for i, name in enumerate(names):
        for k in range(6):
            source = names[(i + 1) % 3] if mislabel else name
            freq = FREQS[source] * (1.0 if collapse else 1.02 + 0.03 * k)
            tone(folder / name / f"{name}_{k:03d}.wav", freq=freq, sr=16000, seconds=0.5)
    return folder


def evaluate(root, generated, *extra):
    out = root / f"report_{generated.name}"
    assert ev.main(["--model", str(root / "out" / "classifier.keras"), "--generated", str(generated),
                    "--out", str(out), "--workers", "1", *extra]) == 0
    return json.loads((out / "generation_report.json").read_text()), out


def test_right_class_sounds_score_high_and_wrong_ones_low(classifier):
    good, out = evaluate(classifier, fake_generated(classifier / "good"), "--real-dir", str(classifier / "train"))
    bad, _ = evaluate(classifier, fake_generated(classifier / "mislabelled", mislabel=True))
    assert good["generated"]["conditional_accuracy"] >= 0.8
    assert bad["generated"]["conditional_accuracy"] <= 0.2
    assert set(good["generated"]["per_class"]) == set(FREQS)
    assert good["real_held_out"]["conditional_accuracy"] >= 0.8
    assert good["real_held_out"]["clips"] < 48  # only the clips the classifier did not train on
    assert (out / "generation_confusion_matrix.png").stat().st_size > 0
    shutil.rmtree(classifier / "mislabelled")


def test_noise_is_farther_from_real_than_real_like_tones(classifier):
    rng = np.random.default_rng(0)
    import soundfile as sf
    for name in FREQS:
        (classifier / "noise" / name).mkdir(parents=True)
        for k in range(6):
            sf.write(classifier / "noise" / name / f"{k}.wav", 0.3 * rng.standard_normal(8000), 16000)
    noise, _ = evaluate(classifier, classifier / "noise", "--real-dir", str(classifier / "train"))
    good, _ = evaluate(classifier, fake_generated(classifier / "good2"), "--real-dir", str(classifier / "train"))
    assert good["generated"]["frechet_distance"] < noise["generated"]["frechet_distance"]


def test_collapsed_generator_has_a_lower_class_spread_within_classes(classifier):
    collapsed, _ = evaluate(classifier, fake_generated(classifier / "collapsed", collapse=True))
    for per_class in collapsed["generated"]["per_class"].values():
        assert per_class["inception_score"] == pytest.approx(1.0, abs=0.05)


def test_collapsed_generator_has_almost_no_diversity_and_varied_clips_have_some(classifier):
    collapsed, _ = evaluate(classifier, fake_generated(classifier / "collapsed2", collapse=True),
                            "--real-dir", str(classifier / "train"))
    varied, _ = evaluate(classifier, fake_generated(classifier / "varied"), "--real-dir", str(classifier / "train"))
    # The collapsed clips differ only by their 1% noise floor; the varied ones span the class's tone band.
    assert collapsed["generated"]["relative_diversity"] < 0.3
    assert varied["generated"]["relative_diversity"] > 2 * collapsed["generated"]["relative_diversity"]


def test_a_generator_that_copies_its_training_clips_is_caught(classifier):
    copies = classifier / "copies"
    shutil.copytree(classifier / "train", copies)
    copied, _ = evaluate(classifier, copies, "--real-dir", str(classifier / "train"))
    new, _ = evaluate(classifier, fake_generated(classifier / "new"), "--real-dir", str(classifier / "train"))
    assert copied["memorisation"]["nearest_real_ratio"] < 0.01
    assert copied["memorisation"]["near_copies"] == 1.0
    assert new["memorisation"]["nearest_real_ratio"] > 0.1
    assert new["memorisation"]["near_copies"] < copied["memorisation"]["near_copies"]


def test_nearest_distances_and_diversity_on_known_points():
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(ev.nearest_distances(np.array([[1.0, 0.0], [10.0, 3.0]]), ref), [1.0, 3.0])
    assert ev.diversity(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    assert ev.diversity(np.zeros((1, 2))) == 0.0


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert ev.main(["--model", str(tmp_path / "nope.keras"), "--generated", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --model needs")


def test_an_ensemble_of_folds_is_scored_with_its_average_and_embeds_with_its_first_member():
    import keras

    from cnn_model import build_cnn
    members = [build_cnn(8, 6, 3, -50.0, 100.0, width=4, name=f"cnn_{k}") for k in range(2)]
    x = np.random.default_rng(0).uniform(-90, -10, (5, 8, 6)).astype(np.float32)
    probs, emb = ev.with_embeddings(tc.ensemble(members)).predict(x, verbose=0)
    expected = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    first = keras.Model(members[0].inputs, members[0].get_layer("embedding").output).predict(x, verbose=0)
    np.testing.assert_allclose(emb, first, atol=1e-5)
