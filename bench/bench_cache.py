"""Benchmark: a re-run that finds its features cached vs the cold run that computed them.

    python bench/bench_cache.py [--clips 360] [--repeats 3]

The cold run decodes and transforms every clip (in parallel) and streams the
features to a fresh cache; the cached run only checks every file's size and
modification time and memory-maps the result. Both are timed in a warm
process, so the cold figure leaves out librosa's one-off start-up: the ratio
is, if anything, understated.
"""
import tempfile
from pathlib import Path

from common import median_seconds, parser, report, row, write_clips
import audio_data as ad

GOAL = 50.0


def main():
    p = parser(__doc__)
    p.add_argument("--clips", type=int, default=360, help="the demo's training set size")
    args = p.parse_args()
    cfg = ad.FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_clips(Path(tmp) / "clips", args.clips)
        ad.extract_features(paths[:4], cfg, None)  # warm-up
        fresh_caches = (Path(tmp) / f"cold-{i}" for i in range(args.repeats))
        cold = median_seconds(lambda: ad.extract_features(paths, cfg, next(fresh_caches)), args.repeats)
        cached = median_seconds(lambda: ad.extract_features(paths, cfg, Path(tmp) / "cold-0"), max(5, args.repeats))
    ratio = cold / cached
    report(args, [row("cached re-run vs cold run", args.clips / cached, "clips/s", args.clips / cold,
                      goal=f">= {GOAL:g}x", met=ratio >= GOAL,
                      detail=f"{args.clips} clips, 22.05 kHz, 4 s, 128 mels; cold {cold:.2f} s, cached {cached * 1000:.0f} ms")])


if __name__ == "__main__":
    main()
