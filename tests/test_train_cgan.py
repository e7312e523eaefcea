"""train_cgan.py end to end on generated clips, with a tiny config; and the inversion on a real signal."""
import html
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import audio_data as ad
import train_cgan as tg
from conftest import ROOT, dead_pid, make_tone_dataset, tone

TINY = ["--sr", "8000", "--duration", "0.5", "--n-mels", "16", "--n-fft", "256", "--hop-length", "64",
        "--width", "8", "--latent-dim", "8", "--batch-size", "4", "--workers", "1", "--gl-iters", "16",
        "--samples-per-class", "3", "--sample-every", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tone_dataset(tmp_path_factory.mktemp("data") / "train", per_class=5)


def run(data, out, *extra):
    return tg.main(["--data-dir", str(data), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert run(data, out, "--epochs", "2") == 0
    return out


def test_writes_valid_clips_per_class_at_the_right_rate_and_length(trained):
    for name in ("high", "low"):
        clips = sorted((trained / "generated" / name).glob("*.wav"))
        assert [c.name for c in clips] == [f"{name}_{i:03d}.wav" for i in range(3)]
        for clip in clips:
            info = sf.info(clip)
            assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, 4000, 1, "PCM_16")
            wave, _ = sf.read(clip)
            assert np.isfinite(wave).all()
            assert 0.5 < np.abs(wave).max() < 0.95  # audible, never clipped
            assert wave.std() > 0.01  # not silent


def test_training_writes_its_records(trained):
    losses = (trained / "losses.csv").read_text().splitlines()
    assert losses[0] == "epoch,loss_d,loss_g" and len(losses) == 3
    for name in ("losses.png", "generated_mels.png", "samples/epoch_0002.png", "cgan_checkpoint.pt"):
        assert (trained / name).stat().st_size > 0, name
    assert not [p for p in trained.rglob(".*")]  # no temporary files left


def test_generate_only_samples_from_the_checkpoint(trained, tmp_path):
    out = tmp_path / "gen"
    assert tg.main(["--generate-only", "--checkpoint", str(trained / "cgan_checkpoint.pt"), "--out", str(out),
                    "--samples-per-class", "2", "--gl-iters", "8"]) == 0
    assert len(list((out / "generated").rglob("*.wav"))) == 4
    assert not (out / "cgan_checkpoint.pt").exists()  # nothing trained


def test_resumed_run_matches_an_uninterrupted_one(data, tmp_path):
    assert run(data, tmp_path / "straight", "--epochs", "3") == 0
    assert run(data, tmp_path / "resumed", "--epochs", "1") == 0
    assert run(data, tmp_path / "resumed", "--epochs", "3", "--resume") == 0
    # weights_only=True: the checkpoint holds nothing but tensors and plain values.
    a = torch.load(tmp_path / "straight" / "cgan_checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "cgan_checkpoint.pt", weights_only=True)
    assert b["epoch"] == 3 and [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for key in a["G"]:
        torch.testing.assert_close(a["G"][key], b["G"][key])


def test_listening_page_links_every_generated_clip_and_embeds_real_ones(trained, data):
    page = (trained / "generated" / "index.html").read_text()
    for name in ("high", "low"):
        for i in range(3):
            assert f'src="{name}/{name}_{i:03d}.wav"' in page
    assert page.count("data:audio/wav;base64,") == 8  # 4 real clips per class, spread over its 5
    assert page.count("<img") == 14 and page.count("data:image/png;base64,") == 14


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
window.addEventListener("load", async () => {
  const audio = await Promise.all([...document.querySelectorAll("audio")].map(a => new Promise(done => {
    if (a.readyState >= 1) return done(a.duration);
    a.addEventListener("loadedmetadata", () => done(a.duration));
    a.addEventListener("error", () => done(-1));
    a.load();
  })));
  const images = [...document.querySelectorAll("img")].map(i => i.complete && i.naturalWidth > 0);
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify({audio, images});
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(page, tmp_path) -> dict:
    """Load the page (plus a probe script, in a copy beside it) in headless Chromium: each player's
    duration once its clip loaded (-1 if it failed), and whether each image decoded."""
    probe = page.with_name(".probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert found, res.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_listening_page_plays_in_a_real_browser(trained, tmp_path):
    copy = shutil.copytree(trained / "generated", tmp_path / "generated")
    result = open_in_chromium(copy / "index.html", tmp_path)
    assert len(result["audio"]) == 14 and all(d == pytest.approx(0.5, abs=0.01) for d in result["audio"])
    assert len(result["images"]) == 14 and all(result["images"])
    (copy / "low" / "low_001.wav").unlink()  # the probe can fail: a missing clip is caught
    assert sorted(open_in_chromium(copy / "index.html", tmp_path)["audio"])[0] == -1


def test_d_augmentation_pads_shifts_with_silence_and_keeps_the_range():
    scale = {"top_db": 0.0, "range_db": 80.0}
    x = torch.linspace(-1, 1, 40).repeat(64, 1, 8, 1)  # a ramp in time: a wrap-around would be visible
    torch.manual_seed(0)
    out = tg.AugmentForD(0.9, scale, n_mels=8)(x)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)
    # Without gain and cut-out, a shifted ramp is the ramp moved, with silence (-1) where it came from outside.
    aug = tg.AugmentForD(1.0, scale, n_mels=8, gain_db=0.0, cutout=0.0)
    for row in aug(x)[:, 0, 0]:
        inside = row > -1
        assert (torch.diff(row[inside]) > 0).all()  # never a jump back from the end to the start
    assert torch.equal(tg.AugmentForD(0.0, scale, n_mels=8)(x), x)
    # p < 1: a share of clips is seen untouched, so D still learns what a clean clip is.
    kept = (tg.AugmentForD(0.5, scale, n_mels=8)(x) == x).flatten(1).all(1).float().mean()
    assert 0.05 < kept < 0.3  # each of three draws leaves it alone with p >= 0.5 here: about 0.16 expected


def test_per_band_normalisation_round_trips_within_the_range():
    db = np.random.default_rng(0).uniform(-70, 0, (3, 8, 10)).astype(np.float32)
    db[:, :4] -= 10  # bands at different levels
    x = np.clip(db, -80, 0)
    scale = {"top_db": 0.0, "range_db": 80.0, "bin_mean": x.mean(axis=(0, 2)).tolist(),
             "bin_db": (tg.BIN_SPREAD * x.std(axis=(0, 2))).tolist()}
    norm = tg.normalise(db, scale)
    assert norm.min() >= -1 and norm.max() <= 1
    np.testing.assert_allclose(norm.mean(axis=(0, 2)), 0, atol=0.05)  # every band centred
    np.testing.assert_allclose(tg.denormalise(norm, scale), db, atol=1e-3)
    np.testing.assert_allclose(tg.denormalise(torch.from_numpy(norm), scale).numpy(), db, atol=1e-3)


def test_every_model_option_trains_and_its_checkpoint_builds_the_same_models(data, tmp_path):
    options = ["--norm", "bin", "--upsample", "nearest", "--d-positions", "--ac-weight", "1", "--r1", "1",
               "--lr-d", "4e-4", "--d-augment", "0.5"]
    assert run(data, tmp_path / "all", "--epochs", "1", *options) == 0
    state = torch.load(tmp_path / "all" / "cgan_checkpoint.pt", weights_only=True)
    assert state["meta"]["model"]["upsample"] == "nearest" and len(state["meta"]["scale"]["bin_mean"]) == 16
    G, D, _ = tg.build_models(state["meta"], torch.device("cpu"), state)
    assert D.classify is not None and D.positions
    assert any(isinstance(m, torch.nn.Upsample) for m in G.modules())
    assert tg.main(["--generate-only", "--checkpoint", str(tmp_path / "all" / "cgan_checkpoint.pt"),
                    "--out", str(tmp_path / "gen"), "--samples-per-class", "2", "--gl-iters", "8"]) == 0
    assert len(list((tmp_path / "gen" / "generated").rglob("*.wav"))) == 4


@pytest.mark.parametrize("loss", ["bce", "wgan-gp"])
def test_other_losses_train(data, tmp_path, loss):
    assert run(data, tmp_path, "--epochs", "1", "--loss", loss) == 0
    assert len(list((tmp_path / "generated").rglob("*.wav"))) == 6


def spectral_convergence(reference, estimate, n_fft=1024, hop=256):
    stft = lambda w: torch.stft(torch.as_tensor(w), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()  # noqa: E731
    s, e = stft(reference), stft(estimate)
    return float(torch.linalg.norm(s - e) / torch.linalg.norm(s))


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_griffin_lim_round_trip_of_a_real_signal(mel_scale):
    """A harmonic tone with a pitch glide and a noise burst, through log-mel and back."""
    cfg = ad.FeatureConfig(sr=16000, duration=1.0, n_fft=1024, hop_length=256, n_mels=128, mel_scale=mel_scale)
    t = np.arange(cfg.n_samples) / cfg.sr
    f0 = 220 * 2 ** t
    phase = 2 * np.pi * np.cumsum(f0) / cfg.sr
    signal = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.exp(-2 * t)
    signal[8000:8800] += 0.3 * np.random.default_rng(0).standard_normal(800)
    signal = (0.5 * signal / np.abs(signal).max()).astype(np.float32)
    mel_db = torch.from_numpy(ad.log_mel(signal, cfg))[None]
    rebuilt = tg.mel_to_audio(mel_db, cfg, gl_iters=64)[0].numpy()
    assert np.isfinite(rebuilt).all()
    sc = spectral_convergence(signal, ad.fix_length(rebuilt, cfg.n_samples))
    assert sc < 0.35, sc
    noise = np.random.default_rng(1).standard_normal(cfg.n_samples).astype(np.float32) * 0.1
    assert spectral_convergence(signal, noise) > 1.0  # the bound means something


def test_batched_inversion_keeps_every_clip_its_own_across_chunks():
    """The clips' frames are solved side by side and inverted in chunks: none may pick up another's sound."""
    cfg = ad.FeatureConfig(sr=16000, duration=2.0, n_fft=1024, hop_length=256, n_mels=64)
    t = np.arange(cfg.n_samples) / cfg.sr
    freqs = 300.0 + 300.0 * np.arange(10)  # 10 clips: more than one chunk at this size (8)
    mels = torch.from_numpy(np.stack([ad.log_mel(np.sin(2 * np.pi * f * t).astype(np.float32), cfg) for f in freqs]))
    rebuilt = tg.mel_to_audio(mels, cfg, gl_iters=16).numpy()
    assert rebuilt.shape[0] == 10 and np.isfinite(rebuilt).all()
    peak_hz = np.abs(np.fft.rfft(rebuilt, axis=1)).argmax(axis=1) * cfg.sr / rebuilt.shape[1]
    # Each clip's tone comes back nearest its own frequency (within a mel band, ~40-120 Hz here).
    np.testing.assert_array_equal(np.abs(peak_hz[:, None] - freqs[None]).argmin(axis=1), np.arange(10))


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train_cgan.py"), *TINY, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("one_class", "at least 2 classes"),
    ("no_checkpoint", "not found"),
])
def test_bad_input_is_a_one_line_error(tmp_path, case, message):
    data = tmp_path / "train"
    extra = ["--epochs", "1"]
    if case == "one_class":
        tone(data / "a" / "1.wav")
        (data / "b").mkdir(parents=True)
        (data / "b" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    elif case == "no_checkpoint":
        extra = ["--generate-only", "--checkpoint", str(tmp_path / "nope.pt")]
    res = run_cli("--data-dir", str(data), "--out", str(tmp_path / "out"), *extra)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["torch_payload", "pickle_payload", "truncated", "text", "foreign_weights",
                                  "wrong_shapes"])
@pytest.mark.parametrize("mode", ["--generate-only", "--resume"])
def test_a_file_that_is_not_our_checkpoint_is_refused_and_nothing_in_it_runs(trained, tmp_path, kind, mode):
    import pickle
    marker = tmp_path / "payload_ran"
    bad = tmp_path / "cgan_checkpoint.pt"
    good = trained / "cgan_checkpoint.pt"
    if kind == "torch_payload":  # a real torch zip file with a code-running object inside
        state = torch.load(good, weights_only=True)
        state["history"] = Payload(marker)
        torch.save(state, bad)
    elif kind == "pickle_payload":  # a bare pickle, the legacy torch format
        bad.write_bytes(pickle.dumps({"G": Payload(marker)}))
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "foreign_weights":  # a valid torch file of someone else's model
        torch.save(torch.nn.Linear(3, 2).state_dict(), bad)
    else:  # our format marker, but weights that fit no model of ours
        state = torch.load(good, weights_only=True)
        state["G"] = {k: v.reshape(-1)[:1] for k, v in state["G"].items()}
        torch.save(state, bad)
    res = run_cli("--data-dir", str(tmp_path / "none"), "--out", str(tmp_path), mode, "--epochs", "3",
                  "--checkpoint", str(bad))
    assert not marker.exists(), "the checkpoint's payload ran"
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad} is not a cGAN checkpoint of this script ("), last


def test_stale_temporaries_of_a_killed_run_are_removed(data, tmp_path):
    dead = dead_pid()
    stale = [tmp_path / "samples" / f".epoch_0005.{dead}.part-abcd1234.png",
             tmp_path / f".cgan_checkpoint.{dead}.part-abcd1234.pt",
             tmp_path / "generated" / "low" / f".low_001.{dead}.part-abcd1234.wav"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (tmp_path / "cache" / f".features.{dead}.part-abcd1234").mkdir(parents=True)
    assert run(data, tmp_path, "--epochs", "1") == 0
    assert not [p for p in tmp_path.rglob(".*")]
