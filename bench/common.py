"""What every benchmark shares: generated clips, median timing, and the rows it reports.

Each benchmark is a script that runs alone (`python bench/bench_cache.py`) and,
given `--json PATH`, also writes its rows there for `bench/run.py`, which runs
each one in its own process: TensorFlow and PyTorch never share one, and a
memory figure is never inflated by an earlier benchmark.
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import make_demo_data  # noqa: E402


def parser(doc: str, repeats: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=repeats, help="runs of each measurement; the median is reported")
    p.add_argument("--json", help="also write the result rows to this file (for bench/run.py)")
    return p


def demo_arguments(script: str) -> list[str]:
    """The arguments `make demo` gives `script` (e.g. "train_cgan.py"), as `make -n demo` prints them.

    The Makefile is the one place the demo's settings are written; what a
    benchmark times or labels as "the demo's" is read from there.
    """
    commands = subprocess.run(["make", "-n", "--no-print-directory", "demo"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.replace("\\\n", " ")
    for line in commands.splitlines():
        words = shlex.split(line)
        if len(words) > 1 and words[1] == script:
            return words[2:]
    raise ValueError(f"`make demo` does not run {script}")


def demo_epochs(script: str) -> int:
    """The epochs `make demo` trains `script` for."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--epochs", type=int, required=True)
    return p.parse_known_args(demo_arguments(script))[0].epochs


def timed(fn, *args):
    """(seconds fn(*args) took, what it returned)."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def median_seconds(fn, repeats: int, *args) -> float:
    return statistics.median(timed(fn, *args)[0] for _ in range(repeats))


def paired_seconds(baseline, ours, repeats: int, *args):
    """Time the baseline and ours alternately, `repeats` times each.

    Returns their median seconds, the median of the per-pair speed-ups and what
    each returned last. On a shared machine slow spells come and go; a pair
    run back to back sees the same one, so its ratio is steadier than a ratio of
    medians taken minutes apart.
    """
    pairs = [(timed(baseline, *args), timed(ours, *args)) for _ in range(repeats)]
    (_, base_result), (_, ours_result) = pairs[-1]
    base_s, ours_s = ([pair[i][0] for pair in pairs] for i in (0, 1))
    return (statistics.median(base_s), statistics.median(ours_s),
            statistics.median(b / o for b, o in zip(base_s, ours_s)), base_result, ours_result)


def write_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n clips of the demo data set's kind: drum hits of 0.3 to 3 s, at mixed rates, depths and channel counts."""
    import numpy as np
    import soundfile as sf
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        y, sr, subtype = make_demo_data.render_clip(make_demo_data.CLASSES[i % len(make_demo_data.CLASSES)], rng)
        paths.append(folder / f"{i:05d}.wav")
        sf.write(paths[-1], y, sr, subtype=subtype)
    return paths


def row(name: str, ours: float, unit: str, baseline: float | None = None, goal: str | None = None,
        met: bool | None = None, detail: str = "", ratio: float | None = None, **figures) -> dict:
    """One line of the results table; `ratio` is ours / baseline (both rates, or both sizes) unless
    given (paired_seconds' median of per-pair ratios). `figures` are the numbers the detail quotes."""
    return {"name": name, "ours": ours, "unit": unit, "baseline": baseline,
            "ratio": ratio or (ours / baseline if baseline else None), "goal": goal, "met": met, "detail": detail,
            **figures}


def report(args, rows: list[dict]) -> None:
    for r in rows:
        ratio = f"  ({r['ratio']:.1f}x vs {r['baseline']:.3g})" if r["ratio"] else ""
        goal = f"  goal {r['goal']}: {'met' if r['met'] else 'NOT met'}" if r["goal"] else ""
        print(f"{r['name']}: {r['ours']:.3g} {r['unit']}{ratio}{goal}  {r['detail']}".rstrip())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
