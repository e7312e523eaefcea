"""Generated clips judged on real data: train_cgan.py at the README's lighter command, scored by a judge.

    python bench/bench_cgan.py ~/.cache/audio-devsets/drums [--variant NAME="FLAGS"] [--code DIR]

DATA is a folder with train/<class>/*.wav (such as ../shared/devsets/build_devsets.py
makes). The judge is train_classifier.py trained once on DATA/train at the GAN's
clip length (its defaults otherwise), and kept between runs; the real clips it
held out for validation are the reference line. Each GAN run trains from cold
with the README's lighter command (`--epochs 60 --duration 1.0 --n-mels 64
--samples-per-class 20 --seed 0`) plus the variant's flags, and
evaluate_generated.py scores what it generated: conditional accuracy, class
spread, Fréchet distance, diversity and memorisation, beside real held-out clips.
Rows are merged into --json (same variant: replaced).

`--code DIR` runs another checkout's train_cgan.py (an earlier commit, say, from
`git worktree add`), scored by the same judge: the "before" row of an ablation.
"""
import argparse
import datetime
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from run import commit, machine

ROOT = Path(__file__).resolve().parent.parent
README_FLAGS = ["--epochs", "60", "--duration", "1.0", "--n-mels", "64", "--samples-per-class", "20", "--seed", "0"]
# One model, and clips it never trains on: the real reference line beside the generated clips.
JUDGE_FLAGS = ["--duration", "1.0", "--n-mels", "64", "--epochs", "30", "--seed", "0", "--train-only",
               "--val-split", "0.2", "--ensemble", "1"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("data", help="folder with train/<class>/*.wav")
    p.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                   help="run train_cgan.py with these extra flags (repeatable); without any, the defaults")
    p.add_argument("--code", default=str(ROOT), help="the checkout whose train_cgan.py is run")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "cgan"), help="scratch folder (the judge stays)")
    p.add_argument("--json", default=str(ROOT / "bench" / "cgan.json"), help="rows are merged into this file")
    return p.parse_args(argv)


def run_logged(cmd, log: Path) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed ({res.returncode}); log in {log}")
    return time.perf_counter() - start


def judge(train: Path, scratch: Path) -> Path:
    model = scratch / "judge" / "classifier.keras"
    if not model.exists():
        print("training the judge (once)", flush=True)
        run_logged([sys.executable, ROOT / "train_classifier.py", "--train-dir", train, "--out", model.parent,
                    *JUDGE_FLAGS], model.parent / "log.txt")
    return model


def run_variant(name, flags, code: Path, train: Path, model: Path, scratch: Path) -> dict:
    out = scratch / name
    shutil.rmtree(out, ignore_errors=True)  # cold: no feature cache, no checkpoint
    seconds = run_logged([sys.executable, code / "train_cgan.py", "--data-dir", train, "--out", out,
                          *README_FLAGS, *flags], out / "log.txt")
    run_logged([sys.executable, ROOT / "evaluate_generated.py", "--model", model, "--generated", out / "generated",
                "--real-dir", train, "--out", out], out / "evaluate_log.txt")
    report = json.loads((out / "generation_report.json").read_text())
    code_commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    return {"variant": name, "flags": " ".join(flags), "code": code_commit, "seconds": round(seconds, 1),
            "generated": report["generated"], "real": report["real_held_out"],
            "memorisation": report.get("memorisation"), "classes": report["classes"], "commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def ratios(row) -> dict:
    g, r = row["generated"], row["real"]
    return {"accuracy": g["conditional_accuracy"] / r["conditional_accuracy"],
            "spread": g["inception_score"] / r["inception_score"], "diversity": g["relative_diversity"]}


def main(argv=None):
    args = parse_args(argv)
    data, scratch = Path(args.data).expanduser(), Path(args.out)
    model = judge(data / "train", scratch)
    runs = [(n, shlex.split(f)) for n, _, f in (v.partition("=") for v in args.variant)] or [("default", [])]
    path = Path(args.json)
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    print(f"{'variant':34}{'seconds':>8}{'accuracy':>9}{'x real':>7}{'spread':>7}{'x real':>7}{'diversity':>10}"
          f"{'copies':>7}", flush=True)
    for name, flags in runs:
        row = run_variant(name, flags, Path(args.code), data / "train", model, scratch)
        old = [r for r in old if r["variant"] != name] + [row]
        path.write_text(json.dumps({"machine": machine(), "data": data.name, "rows": old}, indent=1))
        g, x = row["generated"], ratios(row)
        copies = row["memorisation"]["near_copies"] if row["memorisation"] else float("nan")
        print(f"{name:34}{row['seconds']:8.0f}{g['conditional_accuracy']:9.3f}{x['accuracy']:7.2f}"
              f"{g['inception_score']:7.2f}{x['spread']:7.2f}{x['diversity']:10.2f}{copies:7.0%}", flush=True)
    print(f"rows merged into {path}")


if __name__ == "__main__":
    main()
