"""`make bench`: every benchmark in its own process, then `make demo` timed; one table, one JSON.

    python bench/run.py [--only augment cache ...] [--no-demo]

Writes bench/results.json: the rows of every benchmark (each a rate or a size,
with the baseline measured in the same run and their ratio), the machine they
ran on, and where the timed demo left its outputs (outputs/bench/demo, read by
bench/results_page.py for docs/RESULTS.md).
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from common import demo_epochs, row
import audio_data as ad

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEMO_OUT = Path("outputs/bench/demo")
DEMO_DATA = Path("outputs/bench/demo-data")
DEMO_GOAL_S = 300
SUITE_GOAL_S = 600
BENCHMARKS = {  # name -> command line after `python`
    "augment": ["bench_augment.py"],
    "cache": ["bench_cache.py"],
    "inversion": ["bench_inversion.py"],
    "memory": ["bench_memory.py"],
    "classifier": ["bench_training.py", "classifier"],
    "cgan": ["bench_training.py", "cgan"],
}


def run_benchmark(name: str, env: dict) -> list[dict]:
    print(f"\n== {name} ==", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, str(BENCH / BENCHMARKS[name][0]), *BENCHMARKS[name][1:], "--json", f.name],
                       cwd=ROOT, env=env, check=True)
        return json.loads(Path(f.name).read_text())


def time_demo(env: dict, epochs: dict) -> list[dict]:
    """`make demo` as a user runs it (venv already built), into outputs/bench/ so the user's own outputs stay."""
    print("\n== make demo ==", flush=True)
    make_vars = [f"OUT={DEMO_OUT}", f"DEMO={DEMO_DATA}"]
    # A first run, as a user's: no feature cache, and no training state a classifier could resume.
    shutil.rmtree(ROOT / DEMO_OUT, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(["make", "--no-print-directory", "demo", *make_vars], cwd=ROOT, env=env, check=True)
    seconds = time.perf_counter() - start
    print("\n== untrained GAN, the evaluation's lower reference (not timed) ==", flush=True)
    subprocess.run(["make", "--no-print-directory", "untrained-gan", *make_vars], cwd=ROOT, env=env, check=True)
    return [row("make demo, wall time", seconds, "s", goal=f"<= {DEMO_GOAL_S} s", met=seconds <= DEMO_GOAL_S,
                detail=f"data, classifier ({epochs['classifier']} epochs), cGAN ({epochs['cgan']} epochs), evaluation; "
                       "venv excluded")]


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines() \
        if shutil.which("nvidia-smi") else []
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    versions = {}
    for name in ["numpy", "librosa", "soundfile", "tensorflow-cpu", "tensorflow", "torch", "torchaudio"]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": models[0] if models else platform.processor(), "cores": ad.default_workers(),
            "ram_gib": round(ram, 1) if ram else None, "gpu": gpus[0] if gpus else "none",
            "os": platform.platform(), "python": platform.python_version(), "packages": versions}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'benchmark':<50}{'ours':>12}{'baseline':>12}  {'unit':<15}{'ratio':>8}  goal")
    for r in rows:
        base = f"{r['baseline']:.4g}" if r["baseline"] else "-"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "-"
        goal = f"{r['goal']}: {'met' if r['met'] else 'NOT MET'}" if r["goal"] else "(for the record)"
        print(f"{r['name']:<50}{r['ours']:>12.4g}{base:>12}  {r['unit']:<15}{ratio:>8}  {goal}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--no-demo", action="store_true", help="skip timing `make demo`")
    p.add_argument("--out", default=str(BENCH / "results.json"))
    args = p.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    rows = []
    took = {}  # wall seconds per part, to see where the suite's time goes
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        rows += run_benchmark(name, env)
        took[name] = round(time.perf_counter() - start, 1)
    epochs = {"classifier": demo_epochs("train_classifier.py"), "cgan": demo_epochs("train_cgan.py")}
    if not args.no_demo and not args.only:
        start = time.perf_counter()
        rows += time_demo(env, epochs)
        took["demo"] = round(time.perf_counter() - start, 1)
    total = time.perf_counter() - started
    complete = not args.only and not args.no_demo
    rows.append(row("whole benchmark suite, wall time", total, "s", goal=f"<= {SUITE_GOAL_S} s" if complete else None,
                    met=total <= SUITE_GOAL_S if complete else None, detail="venv excluded"))
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit(),
               "machine": machine(), "rows": rows, "seconds_per_part": took, "demo": None if not complete else {
                   "out": str(DEMO_OUT), "data": str(DEMO_DATA), "untrained_gan": str(DEMO_OUT / "untrained-gan"),
                   "epochs": epochs}}
    Path(args.out).write_text(json.dumps(results, indent=1))
    print_table(rows)
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; seconds per part: "
          f"{', '.join(f'{k} {v:.0f}' for k, v in took.items())}; wrote {args.out}")
    missed = [r["name"] for r in rows if r["goal"] and not r["met"]]
    if missed:
        print(f"goals not met: {', '.join(missed)}")


if __name__ == "__main__":
    main()
