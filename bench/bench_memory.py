"""Benchmark: peak memory of feature extraction at N and at 10*N clips.

    python bench/bench_memory.py [--clips 100] [--repeats 3]

Each extraction runs in a fresh process (features streamed to a fresh cache,
as the training scripts do) and reports its peak resident memory, and that of
its largest decoding worker. The features of 10*N clips take ten times the
disk; the goal is that memory grows by less than 2x.
"""
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parser, report, row, write_clips
import audio_data as ad

GOAL = 2.0


def peak_mb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def extract_in_child(folder: Path, n: int, cache: Path) -> dict:
    """Peak memory of one extraction of the first n clips, in a process of its own."""
    out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), str(cache)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def child(folder: str, n: str, cache: str) -> None:
    paths = sorted(Path(folder).glob("*.wav"))[:int(n)]
    feats = ad.extract_features(paths, ad.FeatureConfig(), cache, desc=f"{n} clips")
    print(json.dumps({"main_mb": peak_mb(resource.RUSAGE_SELF), "worker_mb": peak_mb(resource.RUSAGE_CHILDREN),
                      "features_mb": feats.x.nbytes / 2**20}))


def main():
    if sys.argv[1:2] == ["--child"]:
        return child(*sys.argv[2:5])
    p = parser(__doc__)
    p.add_argument("--clips", type=int, default=100, help="N; the large run has 10*N")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        write_clips(folder, 10 * args.clips)
        runs = {n: [extract_in_child(folder, n, Path(tmp) / f"cache-{n}-{i}") for i in range(args.repeats)]
                for n in (args.clips, 10 * args.clips)}
    small, large = ({k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]} for n in runs)
    growth = large["main_mb"] / small["main_mb"]
    report(args, [row(f"peak memory, feature extraction of {10 * args.clips} clips", large["main_mb"], "MB",
                      small["main_mb"], goal=f"< {GOAL:g}x growth", met=growth < GOAL,
                      detail=f"vs {args.clips} clips (the baseline); features {small['features_mb']:.0f} -> "
                             f"{large['features_mb']:.0f} MB on disk; largest worker {small['worker_mb']:.0f} -> "
                             f"{large['worker_mb']:.0f} MB", small=small, large=large)])


if __name__ == "__main__":
    main()
