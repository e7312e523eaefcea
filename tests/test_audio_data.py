"""The shared loader, on real files written by the tests: formats, layouts, bad files, cache."""
import json
import math
import os
import sys

import numpy as np
import pytest
import soundfile as sf

import audio_data as ad
from conftest import dead_pid, make_tone_dataset, tone


def dominant_freq(wave, sr):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()]


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("subtype,channels", [("PCM_U8", 1), ("PCM_16", 2), ("PCM_24", 1),
                                              ("PCM_32", 6), ("FLOAT", 2), ("DOUBLE", 1)])
def test_any_rate_depth_and_channels_decode_to_mono_at_target_rate(tmp_path, sr, subtype, channels):
    path = tone(tmp_path / "x.wav", freq=440, sr=sr, seconds=1.0, channels=channels, subtype=subtype)
    wave = ad.load_clip(path, sr=22050, duration=0.5)
    assert wave.dtype == np.float32 and wave.shape == (11025,)
    assert abs(dominant_freq(wave, 22050) - 440) < 5  # resampled, not just relabelled
    assert 0.4 < np.abs(wave).max() < 0.6  # channels averaged, level kept


def test_stereo_channels_are_averaged(tmp_path):
    t = np.arange(8000) / 8000
    left, right = np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 8000, subtype="FLOAT")
    wave = ad.load_clip(tmp_path / "s.wav", sr=8000, duration=1.0)
    np.testing.assert_allclose(wave, 0.75 * left, atol=1e-6)


@pytest.mark.parametrize("ext,fmt", [(".flac", "FLAC"), (".ogg", "OGG"), (".aiff", "AIFF"), (".WAV", "WAV")])
def test_other_containers_and_upper_case_extensions(tmp_path, ext, fmt):
    path = tmp_path / f"clip{ext}"
    t = np.arange(16000) / 16000
    sf.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), 16000, format=fmt)
    assert ad.find_audio_files(tmp_path) == [path]
    assert abs(dominant_freq(ad.load_clip(path, 16000, 1.0), 16000) - 1000) < 5


def test_short_clips_are_zero_padded_and_long_ones_cropped(tmp_path):
    short = ad.load_clip(tone(tmp_path / "short.wav", seconds=0.25), 16000, 1.0)
    long_ = ad.load_clip(tone(tmp_path / "long.wav", seconds=3.0), 16000, 1.0)
    assert short.shape == long_.shape == (16000,)
    assert np.all(short[4000:] == 0) and np.abs(short[:4000]).max() > 0.4
    assert np.abs(long_[-100:]).max() > 0.4


def test_long_recording_is_not_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "ten_minutes.wav"
    sf.write(path, np.full(8000 * 600, 0.25, np.float32), 8000, subtype="PCM_16")
    asked = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, **kw: asked.append(frames) or real_read(self, frames, **kw))
    wave = ad.load_clip(path, sr=8000, duration=2.0)
    assert wave.shape == (16000,)
    assert asked == [16000]


def test_discovery_ignores_hidden_and_non_audio_files(tmp_path):
    tone(tmp_path / "dog" / "a.wav")
    tone(tmp_path / "dog" / "deep" / "b.flac")
    tone(tmp_path / "cat" / "c.wav")
    (tmp_path / "dog" / "._a.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (tmp_path / ".DS_Store").write_bytes(bytes(64))
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    (tmp_path / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "cat" / "._c.wav").write_bytes(bytes(64))
    paths, labels = ad.find_labelled_clips(tmp_path)
    assert [p.name for p in paths] == ["c.wav", "a.wav", "b.flac"]
    assert labels == ["cat", "dog", "dog"]


def test_kaggle_nested_layout_is_unwrapped(tmp_path):
    make_tone_dataset(tmp_path / "train" / "train", per_class=2)
    paths, labels = ad.find_labelled_clips(tmp_path / "train")
    assert sorted(set(labels)) == ["high", "low"] and len(paths) == 4


def test_loose_files_in_root_are_reported(tmp_path, capsys):
    make_tone_dataset(tmp_path, per_class=2)
    tone(tmp_path / "stray.wav")
    paths, _ = ad.find_labelled_clips(tmp_path)
    assert len(paths) == 4
    assert "no class folder" in capsys.readouterr().err


def test_missing_or_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(ad.DataError, match="does not exist"):
        ad.find_labelled_clips(tmp_path / "nope")
    (tmp_path / "cls").mkdir()
    with pytest.raises(ad.DataError, match="no audio files"):
        ad.find_labelled_clips(tmp_path)


def write_bad_files(folder):
    """One file of every kind the loader must refuse, with the word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = tone(folder / "good.wav", sr=44100)
    data = good.read_bytes()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text.wav").write_text("this is not audio")
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    (folder / "header_only.wav").write_bytes(data[:44])
    sf.write(folder / "nan.wav", np.full(1000, np.nan, np.float32), 8000, subtype="FLOAT")
    sf.write(folder / "inf.wav", np.r_[np.zeros(500), np.inf].astype(np.float32), 8000, subtype="FLOAT")
    sf.write(folder / "silent.wav", np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    return {"empty.wav": "empty", "garbage.wav": "unreadable", "text.wav": "unreadable",
            "truncated.wav": "truncated", "header_only.wav": "no audio frames",
            "nan.wav": "NaN", "inf.wav": "NaN or infinite", "silent.wav": "silent"}


def test_every_kind_of_bad_file_gets_a_reason(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, word in expected.items():
        with pytest.raises(ad.BadAudio, match=word):
            ad.load_clip(tmp_path / name, 16000, 1.0)


def test_streamed_wav_with_placeholder_size_is_not_called_truncated(tmp_path):
    data = bytearray(tone(tmp_path / "ok.wav").read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4:at + 8] = b"\xff\xff\xff\xff"
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert ad.load_clip(tmp_path / "streamed.wav", 16000, 1.0).shape == (16000,)


@pytest.mark.parametrize("workers", [1, 2])
def test_extraction_skips_bad_files_with_one_line_each_and_a_summary(tmp_path, capsys, workers):
    expected = write_bad_files(tmp_path / "clips")
    paths = ad.find_audio_files(tmp_path / "clips")
    cfg = ad.FeatureConfig(sr=16000, duration=0.5, n_mels=32, n_fft=512, hop_length=256)
    feats = ad.extract_features(paths, cfg, tmp_path / "cache", workers=workers)
    err = capsys.readouterr().err
    assert [p.name for p, ok in zip(paths, feats.ok) if ok] == ["good.wav"]
    for name, word in expected.items():
        [line] = [l for l in err.splitlines() if f"/{name}:" in l]
        assert line.startswith("warning: skipped") and word in line
    assert f"skipped {len(expected)} of {len(paths)} files" in err
    assert feats.x.shape == (len(paths), 32, cfg.n_frames)
    assert np.isfinite(feats.x).all()


def test_features_have_the_configured_fixed_shape(tmp_path):
    root = make_tone_dataset(tmp_path / "train", per_class=4)
    paths, labels = ad.find_labelled_clips(root)
    cfg = ad.FeatureConfig(sr=16000, duration=0.75, n_mels=40, n_fft=512, hop_length=160)
    feats = ad.extract_features(paths, cfg, None)
    assert feats.x.shape == (8, 40, 1 + 12000 // 160) and feats.ok.all()
    assert feats.x.min() >= ad.DB_FLOOR and feats.x.max() < 60
    # A tone puts its energy in the right mel band: higher class, higher band.
    band = {c: feats.x[np.array(labels) == c].mean(axis=(0, 2)).argmax() for c in ("low", "high")}
    low, high = band["low"], band["high"]
    assert high > low


def test_parallel_streamed_to_cache_and_serial_in_memory_agree(tmp_path):
    paths, _ = ad.find_labelled_clips(make_tone_dataset(tmp_path / "train", per_class=10))
    (tmp_path / "train" / "low" / "bad.wav").write_bytes(b"RIFF0000WAVE")
    paths = ad.find_audio_files(tmp_path / "train")
    cfg = ad.FeatureConfig(sr=16000, duration=0.5, n_mels=32, n_fft=512, hop_length=256)
    serial = ad.extract_features(paths, cfg, None, workers=1)
    parallel = ad.extract_features(paths, cfg, tmp_path / "cache", workers=2)  # an explicit count is used as given
    assert isinstance(parallel.x, np.memmap) and parallel.x.shape == serial.x.shape
    np.testing.assert_array_equal(serial.x, parallel.x)
    assert serial.skipped.keys() == parallel.skipped.keys() == {paths.index(tmp_path / "train" / "low" / "bad.wav")}


def test_feature_workers_are_fresh_processes_not_forks_of_the_caller():
    """A worker forked from a caller that has run TensorFlow can die on a lock held by one of its
    threads. pytest stands in for the framework here: loaded in this process, never in the workers."""
    assert "pytest" in sys.modules
    loaded = ad.parallel_map(eval, ["'pytest' in __import__('sys').modules"] * 4, workers=2)
    assert list(loaded) == [False] * 4
    assert list(ad.parallel_map(math.sqrt, [4.0, 9.0, 16.0], workers=2)) == [2.0, 3.0, 4.0]  # in order


def test_second_run_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    paths, _ = ad.find_labelled_clips(make_tone_dataset(tmp_path / "train", per_class=3))
    (tmp_path / "train" / "low" / "empty.wav").write_bytes(b"")
    paths = ad.find_audio_files(tmp_path / "train")
    cfg = ad.FeatureConfig(sr=16000, duration=0.5, n_mels=32, n_fft=512, hop_length=256)
    first = ad.extract_features(paths, cfg, tmp_path / "cache", workers=1)
    first_x = np.array(first.x)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file on a cached run")

    monkeypatch.setattr(ad, "load_clip", no_decoding)
    # Another caller (another label) reading the same files with the same settings shares the cache.
    second = ad.extract_features(paths, cfg, tmp_path / "cache", desc="real", workers=1)
    assert second.from_cache and not first.from_cache
    np.testing.assert_array_equal(second.x, first_x)
    assert second.skipped == first.skipped and len(second.skipped) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temp debris


def test_cache_is_invalidated_by_config_or_file_change(tmp_path):
    paths, _ = ad.find_labelled_clips(make_tone_dataset(tmp_path / "train", per_class=2))
    cfg = ad.FeatureConfig(sr=16000, duration=0.5, n_mels=32, n_fft=512, hop_length=256)
    ad.extract_features(paths, cfg, tmp_path / "cache", workers=1)
    assert not ad.extract_features(paths, ad.FeatureConfig(**{**cfg.to_dict(), "n_mels": 16}),
                                   tmp_path / "cache", workers=1).from_cache
    tone(paths[0], freq=999, seconds=0.7)  # the user re-exports one clip
    assert not ad.extract_features(paths, cfg, tmp_path / "cache", workers=1).from_cache


def test_classes_left_empty_are_dropped_and_one_class_is_an_error(tmp_path, capsys):
    paths = ["a1", "a2", "b1", "c1"]
    labels = ["a", "a", "b", "c"]
    kept_paths, kept_labels, classes, rows = ad.keep_usable_classes(paths, labels, [True, True, False, True])
    assert classes == ["a", "c"] and kept_labels == ["a", "a", "c"] and rows.tolist() == [0, 1, 3]
    assert "class 'b' has no usable clips" in capsys.readouterr().err
    with pytest.raises(ad.DataError, match="at least 2 classes"):
        ad.keep_usable_classes(paths, labels, [True, True, False, False])


def test_feature_config_round_trips_through_json():
    cfg = ad.FeatureConfig(sr=8000, duration=1.5, n_mels=20, fmax=3000.0, mel_scale="htk")
    assert ad.FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.n_samples == 12000 and cfg.n_frames == 1 + math.floor(12000 / 512)
    saved_before_mel_scale = {k: v for k, v in cfg.to_dict().items() if k != "mel_scale"}
    assert ad.FeatureConfig.from_dict(saved_before_mel_scale).mel_scale == "slaney"
    with pytest.raises(ValueError, match="mel_scale must be one of slaney, htk, not 'HTK'"):
        ad.FeatureConfig.from_dict({**cfg.to_dict(), "mel_scale": "HTK"})


def test_htk_bands_tell_a_kick_from_a_floor_tom_where_slaney_bands_blur_them():
    """64 Slaney bands at 22.05 kHz are 51 Hz apart below 1 kHz: 40 Hz and 75 Hz share a peak band."""
    t = np.arange(22050) / 22050
    peak_band = {}
    for scale in ("slaney", "htk"):
        cfg = ad.FeatureConfig(duration=1.0, n_mels=64, mel_scale=scale)
        peak_band[scale] = [int(ad.log_mel(np.sin(2 * np.pi * f * t).astype(np.float32), cfg).mean(axis=1).argmax())
                            for f in (40.0, 75.0)]
    assert peak_band["slaney"][0] == peak_band["slaney"][1]
    assert peak_band["htk"][0] < peak_band["htk"][1]
    centres = {scale: ad.FeatureConfig(n_mels=64, mel_scale=scale).band_centres()[:3] for scale in ("slaney", "htk")}
    np.testing.assert_allclose(centres["slaney"], [51, 102, 154], atol=1)  # the README's figures
    np.testing.assert_allclose(centres["htk"], [31, 63, 97], atol=1)


@pytest.mark.parametrize("amplitude", [0.0, 1e-12, 1e-7])
def test_silence_and_near_silence_sit_exactly_on_the_floor(amplitude):
    """The floor holds exactly on every CPU: float32 log10 rounds differently with AVX-512."""
    cfg = ad.FeatureConfig(sr=16000, duration=0.5, n_mels=64, n_fft=512, hop_length=128)
    wave = amplitude * np.random.default_rng(0).standard_normal(cfg.n_samples).astype(np.float32)
    mel = ad.log_mel(wave, cfg)
    assert mel.dtype == np.float32 and mel.min() == ad.DB_FLOOR
    if amplitude < 1e-9:
        assert (mel == ad.DB_FLOOR).all()


def test_stale_temporaries_of_dead_runs_are_removed_and_nothing_else(tmp_path):
    dead = dead_pid()
    stale_file = tmp_path / f".epoch_0005.{dead}.part-ab12cd_3.png"
    stale_dir = tmp_path / f".features.{dead}.part-zz9yy8xx"
    live = tmp_path / f".losses.{os.getpid()}.part-ab12cd34.csv"  # a running process's: kept
    users = [tmp_path / ".DS_Store", tmp_path / ".epoch-notours.png", tmp_path / f".notes.{dead}.part-x.txt",
             tmp_path / "epoch_0005.png"]
    for path in [stale_file, live, *users]:
        path.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "features.npy").write_bytes(b"x")
    assert ad.remove_stale_temporaries(tmp_path, tmp_path / "missing") == 2
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and all(p.exists() for p in users)


def test_atomic_output_names_its_temporary_so_a_later_run_can_tell_it_is_stale(tmp_path):
    with ad.atomic_output(tmp_path / "report.json") as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        assert ad.remove_stale_temporaries(tmp_path) == 0  # ours, and we are alive
        tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_native_info_logs_are_hidden_and_warnings_kept(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with ad.native_info_logs_hidden():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795629441.415197    2899 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"W0000 00:00:1795629441.415197    2899 x.cc:1] a real warning\n")
        print("python's own warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "absl::InitializeLog" not in err and "oneDNN" not in err
    assert "a real warning" in err and "python's own warning" in err
