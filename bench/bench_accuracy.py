"""Test accuracy on real data sets: this project's classifier beside the seed-style CNN and a linear model.

    python bench/bench_accuracy.py ~/.cache/audio-devsets/drums@2.0 ~/.cache/audio-devsets/instruments@1.0

Each data set is a folder with train/<class>/*.wav, test/*.wav and answers.csv
(ID without the extension, Class), such as ../shared/devsets/build_devsets.py makes;
`@SECONDS` sets --duration for it (default 2.0). Every model is trained from cold
(no feature cache) on train/, predicts test/, and is scored against answers.csv:
accuracy, macro F1 and wall time, printed as one table and written as JSON rows.

`--variant NAME="FLAGS"` adds runs of train_classifier.py with FLAGS on top of the
README's CPU command: the rows of the results page's ablation table.

`--sources K [K ...]` trains ours on only K sources (kits, instruments, recordings:
named by `--source-regex`) of each class, drawn at random, `--draws` times per K with
another draw and seed each time: how test accuracy grows with the number of sources
to learn from, the results page's learning curve.

`--random-split SHARE` pools each data set's train/ and labelled test/ clips and
splits them again at random (stratified by class, SHARE of them to test): test
clips then come from kits and instruments also heard in training, as in a
Kaggle-style random split, instead of unseen ones. Its rows are named DATA-random-split.

Where a data set DATA has a second test set beside it, DATA-check, that shares its train/
(as bench/build_check_sets.py makes them), every model of ours trained on DATA also predicts
DATA-check/test (`train_classifier.py --model`, no second training): each default and
variant then has a row on both test sets, from the same trained models. Such a row's wall
time is the training run's.

`--repeats N` runs every model N times, alternating their order, and records the
median wall time (and each run's): one cold run's time varies by a quarter on a
shared machine, so time against the reference is read from medians. The row's
accuracy is the last run's, each run's is kept beside it (ours trains
deterministically on the CPU; the reference need not).
"""
import argparse
import csv
import datetime
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from run import commit, machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from score_submission import aligned  # noqa: E402
# The README's command for a CPU; only --duration changes per data set.
README_FLAGS = ["--epochs", "30", "--n-mels", "64", "--seed", "0"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("data", nargs="+", help="DATA_DIR[@SECONDS]")
    p.add_argument("--models", nargs="*", default=["ours", "reference", "linear"],
                   choices=["ours", "reference", "linear"], help="which models to run at their defaults (none: only the --variant runs)")
    p.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                   help="also run ours with these extra flags (repeatable)")
    p.add_argument("--sources", nargs="*", type=int, default=[], metavar="K",
                   help="also train ours on K sources per class only (a learning curve over sources)")
    p.add_argument("--draws", type=int, default=3, help="random draws of sources (and seeds) per K")
    p.add_argument("--source-regex", default="^(.+?)__", help="group 1 names a clip's source (kit, instrument)")
    p.add_argument("--random-split", type=float, metavar="SHARE",
                   help="pool train/ and test/ and split them again at random, SHARE of the clips to test")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every model this many times, in alternating order, for the median wall time")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "accuracy"), help="scratch folder")
    p.add_argument("--json", default=str(ROOT / "bench" / "accuracy.json"),
                   help="rows are merged into this file (same data set, model and variant: replaced)")
    return p.parse_args(argv)


def data_sets(specs):
    for spec in specs:
        folder, _, seconds = spec.partition("@")
        folder = Path(folder).expanduser()
        if not (folder / "answers.csv").is_file():
            sys.exit(f"error: {folder} has no answers.csv (expected train/, test/ and answers.csv)")
        yield folder, float(seconds or 2.0)


def score(submission: Path, answers: Path) -> dict:
    true, predicted = aligned(submission, answers)
    return {"accuracy": accuracy_score(true, predicted),
            "macro_f1": f1_score(true, predicted, average="macro", zero_division=0), "test_clips": len(true)}


def command(model: str, folder: Path, seconds: float, out: Path, flags: list[str]) -> tuple[list[str], Path]:
    data = ["--train-dir", str(folder / "train"), "--test-dir", str(folder / "test"), "--out", str(out)]
    if model == "ours":
        return ([sys.executable, str(ROOT / "train_classifier.py"), *data, *README_FLAGS, "--duration", str(seconds),
                 "--drop-extension", *flags], out / "submission_cnn_v2.csv")
    kind = "cnn" if model == "reference" else "linear"
    return ([sys.executable, str(ROOT / "bench" / "seed_reference.py"), kind, *data, "--epochs", "30",
             "--n-mels", "64", "--seed", "0", "--duration", str(seconds)], out / "submission.csv")


def run_dir(scratch: Path, data: str, model: str, variant: str) -> Path:
    """Where one model's run on one data set leaves its outputs (a trained model, its log)."""
    return scratch / data / f"{model}-{variant}"


def run_logged(cmd: list[str], out: Path) -> None:
    """Run cmd, its output to out/log.txt; stop the benchmark, naming the log, if it fails."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({res.returncode}); log in {out / 'log.txt'}")


def run_one(model, variant, flags, folder, seconds, scratch: Path) -> dict:
    out = run_dir(scratch, folder.name, model, variant)
    shutil.rmtree(out, ignore_errors=True)  # cold: no feature cache from an earlier run
    cmd, submission = command(model, folder, seconds, out, flags)
    start = time.perf_counter()
    run_logged(cmd, out)
    seconds_taken = time.perf_counter() - start
    row = {"data": folder.name, "duration": seconds, "model": model, "variant": variant, "flags": " ".join(flags),
           **score(submission, folder / "answers.csv"), "seconds": round(seconds_taken, 1), "commit": commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta = out / "classifier.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        row.update({k: m.get(k) for k in ("val_accuracy", "epochs_run")})
    return row


def check_set_of(folder: Path) -> Path | None:
    """DATA-check beside DATA when it is a second test set of DATA's training clips (its train/ is DATA's)."""
    check = folder.with_name(f"{folder.name}-check")
    if (check / "answers.csv").is_file() and (check / "train").resolve() == (folder / "train").resolve():
        return check
    return None


def score_on_check_set(row: dict, check: Path, scratch: Path) -> dict:
    """`row`'s trained model (ours) scored on the check set's test clips: a row for the check set."""
    model = run_dir(scratch, row["data"], "ours", row["variant"]) / "classifier.keras"
    out = run_dir(scratch, check.name, "ours", row["variant"])
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "train_classifier.py"), "--model", str(model), "--test-dir",
           str(check / "test"), "--out", str(out), "--drop-extension"]
    run_logged(cmd, out)
    trained = {k: v for k, v in row.items() if k != "accuracy_runs"}  # those are the DATA test's
    return {**trained, "data": check.name, **score(out / "submission_cnn_v2.csv", check / "answers.csv"),
            "trained_for": row["data"]}


def sources_of(class_dir: Path, pattern) -> dict[str, list[Path]]:
    """The class's clips by source: group 1 of `pattern` in each file name (files it does not match are left out)."""
    by_source: dict[str, list[Path]] = {}
    for f in sorted(class_dir.iterdir()):
        m = pattern.search(f.name)
        if f.is_file() and m:
            by_source.setdefault(m.group(1), []).append(f)
    return by_source


def source_subset(folder: Path, k: int, draw: int, regex: str, scratch: Path) -> Path:
    """A data set like `folder` (links, no copies) whose train/ keeps k randomly drawn sources of each class
    (all of a class's sources when it has no more than k)."""
    rng = np.random.default_rng(draw)
    pattern = re.compile(regex)
    sub = scratch / f"{folder.name}-{k}-sources-draw-{draw}"
    shutil.rmtree(sub, ignore_errors=True)
    for class_dir in sorted(d for d in (folder / "train").iterdir() if d.is_dir()):
        by_source = sources_of(class_dir, pattern)
        if not by_source:
            sys.exit(f"error: no file name in {class_dir} names its source by {regex!r}")
        (sub / "train" / class_dir.name).mkdir(parents=True)
        for source in rng.choice(sorted(by_source), min(k, len(by_source)), replace=False):
            for f in by_source[source]:
                (sub / "train" / class_dir.name / f.name).symlink_to(f.resolve())
    (sub / "test").symlink_to((folder / "test").resolve())
    (sub / "answers.csv").symlink_to((folder / "answers.csv").resolve())
    return sub


def random_split(folder: Path, test_share: float, scratch: Path) -> Path:
    """A data set like `folder` (links, no copies) whose train/ and test/ clips are pooled and split again
    at random, stratified by class: test clips then share their sources with training clips."""
    clips = [(d.name, f) for d in sorted((folder / "train").iterdir()) if d.is_dir()
             for f in sorted(d.iterdir()) if f.is_file()]
    test_files = {f.stem: f for f in (folder / "test").iterdir() if f.is_file()}
    with open(folder / "answers.csv", newline="") as fh:
        clips += [(row["Class"], test_files[row["ID"]]) for row in csv.DictReader(fh) if row["ID"] in test_files]
    train, test = train_test_split(clips, test_size=test_share, stratify=[c for c, _ in clips], random_state=0)
    sub = scratch / f"{folder.name}-random-split"
    shutil.rmtree(sub, ignore_errors=True)
    for cls, f in train:
        (sub / "train" / cls).mkdir(parents=True, exist_ok=True)
        name = f.name if f.parent.parent == folder / "train" else f"test__{f.name}"  # never two files of one name
        (sub / "train" / cls / name).symlink_to(f.resolve())
    (sub / "test").mkdir()
    answers = []
    for i, (cls, f) in enumerate(test, 1):  # in train_test_split's shuffled order: IDs say nothing of the class
        (sub / "test" / f"clip_{i:04d}{f.suffix}").symlink_to(f.resolve())
        answers.append((f"clip_{i:04d}", cls))
    with open(sub / "answers.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("ID", "Class"), *answers])
    return sub


def learning_curve(folder, seconds, ks, draws, regex, scratch: Path):
    """Ours trained on k sources per class, one row per (k, draw): draw d also trains with --seed d."""
    for k in ks:
        for draw in range(draws):
            subset = source_subset(folder, k, draw, regex, scratch / "subsets")
            row = run_one("ours", f"{k} sources per class, draw {draw}", ["--seed", str(draw)], subset, seconds, scratch)
            yield {**row, "data": folder.name, "sources": k, "draw": draw}


def alternating(runs: list, repeats: int) -> list:
    """runs, repeated, every other time in reverse order: no model always runs first (or last)."""
    return [run for k in range(repeats) for run in (runs if k % 2 == 0 else runs[::-1])]


def with_median_seconds(rows: list[dict]) -> dict:
    """One row for several runs of one model: the last run's, with the median of their wall times."""
    if len(rows) == 1:
        return rows[0]
    times = [r["seconds"] for r in rows]
    return {**rows[-1], "seconds": round(statistics.median(times), 1), "seconds_runs": times,
            "accuracy_runs": [r["accuracy"] for r in rows]}


def merge(path: Path, rows: list[dict]) -> None:
    key = lambda r: (r["data"], r["model"], r["variant"])  # noqa: E731
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    new_keys = {key(r) for r in rows}
    path.write_text(json.dumps({"machine": machine(), "rows": [r for r in old if key(r) not in new_keys] + rows},
                               indent=1))


def print_row(row: dict) -> None:
    val = f"{row['val_accuracy']:.3f}" if row.get("val_accuracy") is not None else "-"
    print(f"{row['data']:25}{row['model']:11}{row['variant']:28}{row['accuracy']:9.3f}{row['macro_f1']:9.3f}{val:>8}"
          f"{row['seconds']:9.0f}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    runs = [(m, "default", []) for m in args.models]
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        runs.append(("ours", name, shlex.split(flags)))
    rows = []
    print(f"{'data':25}{'model':11}{'variant':28}{'accuracy':>9}{'macro F1':>9}{'val acc':>8}{'seconds':>9}")
    for folder, seconds in data_sets(args.data):
        if args.random_split:
            folder = random_split(folder, args.random_split, Path(args.out) / "subsets")
        done = {}
        for model, variant, flags in alternating(runs, args.repeats):
            done.setdefault((model, variant), []).append(run_one(model, variant, flags, folder, seconds, Path(args.out)))
            print_row(done[model, variant][-1])
        trained = [with_median_seconds(runs_of_one) for runs_of_one in done.values()]
        rows += trained
        if args.repeats > 1:
            print(f"medians of {args.repeats} runs:")
            for row in trained:
                print_row(row)
        check = None if args.random_split else check_set_of(folder)
        for row in trained if check else []:
            if row["model"] == "ours":
                rows.append(score_on_check_set(row, check, Path(args.out)))
                print_row(rows[-1])
        for row in learning_curve(folder, seconds, args.sources, args.draws, args.source_regex, Path(args.out)):
            rows.append(row)
            print_row(row)
    merge(Path(args.json), rows)
    print(f"rows merged into {args.json}")


if __name__ == "__main__":
    main()
