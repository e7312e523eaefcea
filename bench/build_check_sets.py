"""Second test sets for bench_accuracy.py: the dev sets' training clips, tested on other sources.

    .venv/bin/python bench/build_check_sets.py [DEVSETS]   (default ~/.cache/audio-devsets)

The dev sets of ../shared/devsets/build_devsets.py test on one SoundFont (MuseScore_General, plus
LMMS's drum samples), and every default of train_classifier.py has been chosen on them. These sets
keep the dev sets' train/ folders (linked, not copied) and test on sources no default was chosen on:

  DEVSETS/drums-check/        the 8 drum kits of the FluidR3 GM SoundFont, and AVL's two acoustic
                              kits (Black Pearl, Red Zeppelin: multi-sampled recordings of real drums)
  DEVSETS/instruments-check/  40 notes of each GM family from FluidR3 GM

The clips are rendered, trimmed and written in mixed formats by build_devsets.py's own functions,
so they are made as the dev sets' test clips are. Build the dev sets first. Installs
fluid-soundfont-gm and avldrums.lv2-soundfont when missing (needs root, as build_devsets.py does).
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "devsets"
PACKAGES = ["fluid-soundfont-gm", "avldrums.lv2-soundfont"]
FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
AVL = {"avl-blackpearl": "/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2",
       "avl-redzeppelin": "/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"}
# AVL's kits are not laid out as General MIDI's: keys as their samples are named in both SoundFonts
# (48 is a hi-hat swish there, not a tom; 50, 52 and 58 have unnamed samples and are left out).
AVL_KEYS = {"kick": [36], "snare": [38, 40], "tom": [41, 43, 45, 47], "hihat": [42, 44, 46, 48],
            "cymbal": [49, 51, 53, 55, 57, 59], "percussion": [54, 56, 64]}
AVL_VELOCITIES = range(40, 128, 12)


def avl_items(b, name, path, tmp):
    """Every AVL_KEYS key of one AVL kit at 8 velocities: (class, source, name, audio, sr) as build_devsets' items."""
    notes = [(0, n, v) for keys in AVL_KEYS.values() for n in keys for v in AVL_VELOCITIES]
    cls = {n: c for c, keys in AVL_KEYS.items() for n in keys}
    return [(cls[n], name, f"n{n}_v{v}", y, b.RENDER_SR)
            for (_, n, v), y in zip(notes, b.render(path, notes, 0, tmp)) if y is not None]


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "audio-devsets"))
    sys.path.insert(0, str(SHARED))
    import build_devsets as b
    for name in ("drums", "instruments"):
        if not (root / name / "train").is_dir():
            sys.exit(f"{root / name / 'train'} is missing: build the dev sets first ({SHARED / 'build_devsets.py'})")
    missing = [p for p in PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                       stdout=subprocess.DEVNULL)
    rng = random.Random(7)
    tmp = tempfile.mkdtemp(prefix="checksets_")
    try:
        drums = b.drum_items(FLUID, "fluid", rng, tmp)
        for name, path in AVL.items():
            drums += avl_items(b, name, path, tmp)
        instruments = b.instrument_items(FLUID, "fluid", rng, tmp, per_class=40)
        for name, items, seconds in [("drums", drums, 2.0), ("instruments", instruments, 1.5)]:
            out = root / f"{name}-check"
            b.write_split(str(out), [], items, rng, seconds)  # test/ and answers.csv only: it prints "0 train clips"
            shutil.rmtree(out / "train", ignore_errors=True)
            (out / "train").symlink_to(root / name / "train", target_is_directory=True)
            print(f"{out}/train: the dev set's, linked ({root / name / 'train'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
