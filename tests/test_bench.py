"""The benchmark scripts at toy sizes: they run, and their rows say what the full runs measure.

The figures themselves are `make bench`'s job (timings do not belong in tests);
these only keep the scripts from rotting and check what cannot be noise.
"""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def bench(tmp_path, script, *args) -> list[dict]:
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_cache_benchmark_finds_the_cached_run_faster(tmp_path):
    [row] = bench(tmp_path, "bench_cache.py", "--clips", "12")
    assert row["unit"] == "clips/s" and row["ratio"] > 1  # a cached run that decodes would not be


def test_memory_benchmark_reports_both_sizes(tmp_path):
    [row] = bench(tmp_path, "bench_memory.py", "--clips", "3")
    assert row["unit"] == "MB" and 50 < row["baseline"] < 2000 and 50 < row["ours"] < 2000
    assert "30 clips" in row["name"]
    assert row["large"]["features_mb"] == 10 * row["small"]["features_mb"] == 30 * 128 * 173 * 4 / 2**20


def test_inversion_benchmark_reconstructs_with_both_methods(tmp_path):
    [row] = bench(tmp_path, "bench_inversion.py", "--clips", "2", "--iters", "8")
    # Both rebuilt the clips' spectra (white noise scores above 1; the full run's 64 iterations, about 0.26).
    assert 0 < row["spectral_convergence_ours"] < 0.8 and 0 < row["spectral_convergence_librosa"] < 0.8


def test_training_benchmark_steps_the_cgan_as_the_script_does(tmp_path):
    rows = bench(tmp_path, "bench_training.py", "cgan")
    assert [r["unit"] for r in rows] == ["steps/s", "steps/s"] and all(r["ours"] > 0 for r in rows)
    # Which is faster is for the benchmark to show: two timings compared in a test flip when the machine is busy.
    assert [r["name"] for r in rows] == ["cGAN training, demo settings", "cGAN training, default settings"]
    assert rows[0]["detail"].startswith("spectrograms 64x") and rows[1]["detail"].startswith("spectrograms 128x")


def test_training_benchmark_trains_the_classifier_with_its_scripts_defaults(tmp_path):
    import train_classifier
    defaults = train_classifier.parse_args([])
    rows = bench(tmp_path, "bench_training.py", "classifier", "--bn-clips", "40")
    assert [r["unit"] for r in rows] == ["samples/s", "clips/s", "samples/s"] and all(r["ours"] > 0 for r in rows)
    # The batch-norm row times two ways to the same statistics: one pass, and each layer from the input.
    statistics = rows.pop(1)
    assert statistics["baseline"] > 0 and statistics["statistics_max_difference"] < 1e-4
    assert "40 clips" in statistics["detail"]
    # The rows describe the settings they ran, and those follow the script's defaults.
    for r in rows:
        assert f"width {defaults.width}, batch {defaults.batch_size}," in r["detail"], r["detail"]
        assert " ".join(defaults.augmentations) in r["detail"]
    assert rows[1]["detail"].startswith(f"input {defaults.n_mels}x")


def test_benchmarks_take_the_demos_settings_from_the_makefile():
    sys.path.insert(0, str(ROOT / "bench"))
    import train_cgan
    import train_classifier
    from common import demo_arguments, demo_epochs
    # Each script's own parser takes the words make would run it with: no make variable or line break is left.
    classifier = train_classifier.parse_args(demo_arguments("train_classifier.py"))
    cgan = train_cgan.parse_args(demo_arguments("train_cgan.py"))
    assert (demo_epochs("train_classifier.py"), demo_epochs("train_cgan.py")) == (classifier.epochs, cgan.epochs)
    # The demo's CPU-sized settings, not the scripts' defaults.
    assert classifier.n_mels < train_classifier.parse_args([]).n_mels and classifier.val_split > 0
    assert cgan.n_mels < train_cgan.parse_args([]).n_mels and cgan.epochs != train_cgan.parse_args([]).epochs
    with pytest.raises(ValueError, match="does not run"):
        demo_arguments("bench/run.py")


def test_results_page_summarises_configurations_run_with_three_seeds_or_more():
    sys.path.insert(0, str(ROOT / "bench"))
    from results_page import seed_summary

    def row(variant, data, accuracy, model="ours"):
        return {"model": model, "variant": variant, "data": data, "accuracy": accuracy}
    rows = [row("default", "drums", 0.70), row("defaults, seed 1", "drums", 0.80), row("defaults, seed 2", "drums", 0.90),
            row("default", "drums", 0.10, model="reference"),  # another model: not ours, not counted
            row("wide", "drums", 0.95), row("wide, seed 1", "drums", 0.85)]  # two runs: too few to summarise
    lines = seed_summary(rows, ["drums"])
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| configuration")]
    assert table == ["| defaults | 3 | 0.800 | 0.100 |"]
    assert seed_summary(rows[3:], ["drums"]) == []


def test_source_subset_keeps_every_clip_of_k_sources_per_class(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_accuracy import source_subset, sources_of

    data = tmp_path / "set"
    for cls in ["kick", "snare"]:
        (data / "train" / cls).mkdir(parents=True)
        for source in ["kitA", "kitB", "kitC"]:
            for note in [1, 2]:
                (data / "train" / cls / f"{source}__{cls}{note}.wav").write_bytes(b"RIFF")
    (data / "test").mkdir()
    (data / "answers.csv").write_text("ID,Class\n")
    pattern = re.compile("^(.+?)__")
    drawn = set()
    for draw in range(6):
        sub = source_subset(data, 2, draw, "^(.+?)__", tmp_path / "subsets")
        for cls in ["kick", "snare"]:
            kept = sources_of(sub / "train" / cls, pattern)
            assert len(kept) == 2 and all(len(files) == 2 for files in kept.values())
            assert all(f.resolve().parent == data / "train" / cls for files in kept.values() for f in files)
            drawn.add((cls, tuple(sorted(kept))))
        assert (sub / "test").resolve() == data / "test" and (sub / "answers.csv").read_text() == "ID,Class\n"
    assert len(drawn) > 2  # the draws differ
    sub = source_subset(data, 4, 0, "^(.+?)__", tmp_path / "subsets")  # more than a class has: all of them
    assert len(sources_of(sub / "train" / "kick", pattern)) == 3
    for f in (data / "train" / "snare").iterdir():
        f.rename(f.with_name(f.name.replace("__", "-")))
    with pytest.raises(SystemExit, match="no file name in"):
        source_subset(data, 2, 0, "^(.+?)__", tmp_path / "subsets")


def test_accuracy_benchmark_scores_the_same_trained_model_on_the_second_test_set(tmp_path):
    """DATA-check beside DATA, with DATA's train/: one training, a row for each test set; the check
    row is that model's score on the check clips, which here are labelled the other way round."""
    import csv

    from conftest import make_tone_dataset, tone

    data, check = tmp_path / "tones", tmp_path / "tones-check"
    make_tone_dataset(data / "train", per_class=8)
    check.mkdir()
    (check / "train").symlink_to(data / "train")
    for folder, names in [(data, ["low", "high"]), (check, ["high", "low"])]:  # check: labels swapped
        answers = [("ID", "Class")]
        for i, freq in enumerate([200.0, 210.0, 600.0, 630.0]):
            tone(folder / "test" / f"t{i}.wav", freq=freq, seconds=0.4)
            answers.append((f"t{i}", names[i // 2]))
        with open(folder / "answers.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(answers)
    rows = bench(tmp_path, "bench_accuracy.py", f"{data}@0.4", "--models", "ours", "--out", str(tmp_path / "runs"))["rows"]
    by_data = {r["data"]: r for r in rows}
    assert set(by_data) == {"tones", "tones-check"}
    ours, checked = by_data["tones"], by_data["tones-check"]
    assert checked["trained_for"] == "tones" and checked["seconds"] == ours["seconds"]
    assert checked["variant"] == ours["variant"] == "default" and checked["test_clips"] == 4
    assert ours["accuracy"] > 0.5  # it learned the tones
    assert checked["accuracy"] == pytest.approx(1 - ours["accuracy"])  # the same predictions, labels swapped
    # A second test set of other training clips is not the same model's: no row for it.
    (check / "train").unlink()
    make_tone_dataset(check / "train", per_class=8)
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_accuracy import check_set_of
    assert check_set_of(data) is None


def test_random_split_pools_train_and_test_and_splits_them_again_by_class(tmp_path):
    import csv
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_accuracy import random_split

    data = tmp_path / "set"
    answers = [("ID", "Class")]
    for cls in ["kick", "snare"]:
        (data / "train" / cls).mkdir(parents=True)
        for note in range(6):
            (data / "train" / cls / f"kitA__{cls}{note}.wav").write_bytes(f"train {cls} {note}".encode())
    (data / "test").mkdir()
    for i in range(8):  # unseen-kit test clips
        name = "kitA__kick0" if i == 0 else f"clip_{i}"
        (data / "test" / f"{name}.wav").write_bytes(f"test {i}".encode())
        answers.append((name, ["kick", "snare"][i % 2]))
    with open(data / "answers.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(answers)

    sub = random_split(data, 0.25, tmp_path / "subsets")
    assert sub.name == "set-random-split"
    with open(sub / "answers.csv", newline="") as fh:
        key = {row["ID"]: row["Class"] for row in csv.DictReader(fh)}
    assert sorted(set(key.values())) == ["kick", "snare"] and len(key) == 5  # a quarter of 20 clips, stratified
    test = {f.stem: f.resolve() for f in (sub / "test").iterdir()}
    assert set(test) == set(key)
    train = {f.resolve(): d.name for d in (sub / "train").iterdir() for f in d.iterdir()}
    assert len(train) == 15 and not set(train) & set(test.values())  # every clip once, on one side
    originals = [f for f in (data / "train").rglob("*.wav")] + [f for f in (data / "test").iterdir()]
    assert set(train) | set(test.values()) == set(originals)
    labels = {f: f.parent.name for f in (data / "train").rglob("*.wav")}
    labels.update({data / "test" / f"{i}.wav": c for i, c in answers[1:]})
    assert all(labels[f] == cls for f, cls in train.items()) and all(labels[test[i]] == c for i, c in key.items())
    assert any(f.parent == data / "test" for f in train) and any(f.parent.parent == data / "train" for f in test.values())
    # A test clip may have a training clip's name: in train/ it is renamed, never overwritten.
    assert all(link.name.startswith("test__") == (link.resolve().parent == data / "test")
               for link in (sub / "train").rglob("*.wav"))


def test_results_page_learning_curve_averages_draws_beside_all_sources():
    sys.path.insert(0, str(ROOT / "bench"))
    from results_page import learning_curve_table

    def row(variant, accuracy, sources=None, data="drums", commit="aaa"):
        return {"model": "ours", "variant": variant, "data": data, "accuracy": accuracy, "commit": commit,
                **({"sources": sources} if sources else {})}
    curve = [row("1 sources per class, draw 0", 0.4, 1), row("1 sources per class, draw 1", 0.6, 1),
             row("2 sources per class, draw 0", 0.7, 2), row("1 sources per class, draw 0", 0.9, 1, data="notes")]
    # "wide" is not the defaults; the defaults of another commit are not the curve's.
    rows = [row("default", 0.8), row("defaults, seed 1", 0.9), row("wide", 0.1), row("default", 0.2, commit="bbb")]
    table = [line for line in learning_curve_table(curve, rows, ["drums", "notes"]) if line.startswith("| ")]
    assert table[1:] == ["| 1 | 0.500 (2) | 0.900 (1) |", "| 2 | 0.700 (1) | - |",
                         "| all (defaults of aaa) | 0.850 (2) | - |"]
    # Without defaults of the curve's commit: those of the commit with the most rows, named.
    rows = [row("default", 0.2, commit="bbb"), row("defaults of ccc", 0.7, commit="ccc"),
            row("defaults of ccc, seed 1", 0.9, commit="ccc")]
    assert learning_curve_table(curve, rows, ["drums"])[-1] == "| all (defaults of ccc) | 0.800 (2) |"
    assert learning_curve_table([], rows, ["drums"]) == []


def test_repeated_runs_alternate_their_order_and_keep_the_median_wall_time():
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_accuracy import alternating, with_median_seconds
    assert alternating(["ours", "reference"], 3) == ["ours", "reference", "reference", "ours", "ours", "reference"]
    runs = [{"accuracy": 0.8, "seconds": s} for s in (95.0, 68.0, 72.0)]
    row = with_median_seconds(runs)
    assert row["seconds"] == 72.0 and row["seconds_runs"] == [95.0, 68.0, 72.0]
    assert row["accuracy_runs"] == [0.8, 0.8, 0.8]
    assert with_median_seconds(runs[:1]) is runs[0]


def test_results_page_shows_a_median_wall_time_with_its_range():
    sys.path.insert(0, str(ROOT / "bench"))
    from results_page import wall_time
    assert wall_time({"seconds": 71.5}) == "72"
    assert wall_time({"seconds": 71.5, "seconds_runs": [68.2, 95.1, 71.5]}) == "72 (68-95, 3 runs)"


def test_results_page_keeps_second_test_and_random_split_runs_out_of_the_main_table(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from results_page import accuracy_section

    def row(data, model, accuracy):
        return {"data": data, "model": model, "variant": "default", "accuracy": accuracy, "macro_f1": accuracy,
                "test_clips": 10, "seconds": 60.0, "commit": "abc1234"}
    rows = [row("drums", "ours", 0.81), row("drums", "reference", 0.71), row("drums-check", "ours", 0.82),
            row("drums-random-split", "ours", 0.97)]
    (tmp_path / "accuracy.json").write_text(json.dumps({"rows": rows}))
    lines = accuracy_section(tmp_path)
    headings = [i for i, line in enumerate(lines) if line.startswith("### ")]
    main, check, heard = lines[:headings[0]], lines[headings[0]:headings[1]], lines[headings[1]:]
    assert [line for line in main if line.startswith("| drums")] == [
        "| drums (10 test clips) | **train_classifier.py** | 0.810 | 0.810 | - | 60 |",
        "| drums (10 test clips) | seed-style CNN | 0.710 | 0.710 | - | 60 |"]
    assert check[0].startswith("### Second test") and any(line.startswith("| drums-check ") for line in check)
    assert heard[0].startswith("### Heard sources") and any(line.startswith("| drums-random-split ") for line in heard)
    assert not any("drums-check" in line for line in heard)
