"""The demo data set: big, messy and varied enough to exercise the scripts; deterministic."""
import subprocess
import sys

import pandas as pd
import pytest
import soundfile as sf

import audio_data as ad
import make_demo_data
from conftest import ROOT


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "set"
    subprocess.run([sys.executable, str(ROOT / "make_demo_data.py"), "--out", str(out)], check=True)
    return out


def test_default_demo_set_has_enough_classes_clips_and_formats(demo):
    paths, labels = ad.find_labelled_clips(demo / "train")
    assert len(set(labels)) >= 5
    assert min(labels.count(c) for c in set(labels)) >= 60
    paths = [p for p in paths if p.stat().st_size]  # the deliberate empty file
    tests = ad.find_audio_files(demo / "test")
    assert len(tests) >= 30
    formats = {(sf.info(p).samplerate, sf.info(p).channels, sf.info(p).subtype) for p in paths + tests}
    assert len({(r, c) for r, c, _ in formats}) >= 3
    assert {r for r, _, _ in formats} == {16000, 22050, 44100, 48000}
    assert {"PCM_16", "PCM_24", "FLOAT"} <= {s for _, _, s in formats}
    lengths = [sf.info(p).duration for p in paths]
    assert min(lengths) < 0.5 and max(lengths) > 2.5


def test_answer_key_names_every_test_clip_once(demo):
    key = pd.read_csv(demo / "test_labels.csv")
    assert list(key.columns) == ["ID", "Class"]
    assert sorted(key.ID) == sorted(p.name for p in ad.find_audio_files(demo / "test"))
    assert set(key.Class) == set(make_demo_data.CLASSES)


def test_demo_set_carries_the_debris_of_real_folders(demo):
    assert (demo / "train" / ".DS_Store").exists()
    assert (demo / "train" / "kick" / "._kick_000.wav").exists()
    assert (demo / "train" / "snare" / "snare_empty.wav").stat().st_size == 0
    with pytest.raises(ad.BadAudio, match="empty"):
        ad.load_clip(demo / "train" / "snare" / "snare_empty.wav", 16000, 1.0)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        make_demo_data.build(tmp_path / name, seed, train_per_class=2, test_per_class=1)
    # Samples, not bytes: libsndfile stamps float WAVs with the time of writing.
    def read(d):
        return [sf.read(p)[0].tobytes() for p in ad.find_audio_files(tmp_path / d) if p.stat().st_size]

    assert read("a") == read("b")
    assert read("a") != read("c")


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(SystemExit, match="refusing"):
        make_demo_data.build(tmp_path, 0, 1, 1)
    assert (tmp_path / "precious.txt").read_text() == "user data"
    make_demo_data.build(tmp_path / "demo", 0, 1, 1)
    make_demo_data.build(tmp_path / "demo", 1, 1, 1)  # its own output is rebuilt in place
    assert (tmp_path / "demo" / "test_labels.csv").exists()
