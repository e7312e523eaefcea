"""Both scripts on their frameworks' distributed engines, with two local CPU processes (or devices).

Each run is a subprocess with a timeout: a hang fails the test instead of stalling CI.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_tone_dataset

TINY_GAN = ["--sr", "8000", "--duration", "0.5", "--n-mels", "16", "--n-fft", "256", "--hop-length", "64",
            "--width", "8", "--latent-dim", "8", "--batch-size", "16", "--workers", "1", "--gl-iters", "4",
            "--samples-per-class", "3", "--sample-every", "1"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tone_dataset(tmp_path_factory.mktemp("data") / "train", per_class=24)


def cgan(data, out, *extra, processes=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([*launcher, str(ROOT / "train_cgan.py"), "--data-dir", str(data), "--out", str(out),
                          *TINY_GAN, *extra], capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def weights(out, net):
    state = torch.load(out / "cgan_checkpoint.pt", weights_only=True)[net]
    return torch.cat([v.flatten() for k, v in state.items() if v.dtype.is_floating_point and "running" not in k
                      and not k.endswith(("_u", "_v"))])


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cgan")
    logs = {"two": cgan(data, root / "two", "--epochs", "3", processes=2),
            "one": cgan(data, root / "one", "--epochs", "3"),
            "start": cgan(data, root / "start", "--epochs", "3", "--lr", "0")}
    return root, logs


def test_two_processes_write_every_output_once(runs):
    root, logs = runs
    out = root / "two"
    clips = sorted(p.relative_to(out / "generated").as_posix() for p in (out / "generated").rglob("*.wav"))
    assert clips == [f"{c}/{c}_{i:03d}.wav" for c in ("high", "low") for i in range(3)]
    assert (out / "losses.csv").read_text().count("\n") == 4  # header + one row per epoch, not per process
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"epoch_{e:04d}.png" for e in (1, 2, 3)]
    assert not [p for p in out.rglob("*") if ".part-" in p.name]
    assert logs["two"].count("wrote 6 clips") == 1 and "2 processes of 8 clips a step" in logs["two"]


def test_two_processes_train_like_one_on_the_same_global_batch(runs):
    """Same data order, noise and augmentation draws as one process on the global batch of 16.

    Not bit for bit: on CPUs each process's batch norm sees its own 8 clips (SyncBatchNorm
    is CUDA-only), which moves the generator, and through its samples the discriminator,
    off the single-process path. So D's distance to the one-process weights is measured
    against how far training moved them: 0.14 here; 0.38 when the processes did not
    average their gradients (each training on its half alone), so the bound of 0.25
    separates the two. G's batch norm blurs that difference for G; that the processes'
    replicas stay identical, G's included, the script checks every epoch (next test).
    """
    root, _ = runs
    moved = (weights(root / "one", "D") - weights(root / "start", "D")).norm()
    apart = (weights(root / "two", "D") - weights(root / "one", "D")).norm()
    assert moved > 0 and apart / moved < 0.25, float(apart / moved)


def test_replicas_that_drift_apart_stop_the_run(data, tmp_path):
    """The per-epoch replica check can fail: give one process a different learning rate."""
    script = (f"import os, sys, runpy; sys.path.insert(0, {str(ROOT)!r}); "
              "sys.argv[1:] += ['--lr', '3e-4' if os.environ['RANK'] == '1' else '2e-4']; "
              f"runpy.run_path({str(ROOT / 'train_cgan.py')!r}, run_name='__main__')")
    wrapper = tmp_path / "drift.py"
    wrapper.write_text(script)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(wrapper), "--data-dir", str(data), "--out", str(tmp_path / "out"), *TINY_GAN,
                          "--epochs", "1"], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    assert "models have drifted apart" in res.stdout + res.stderr


def test_a_distributed_run_resumes_exactly(data, runs, tmp_path):
    root, _ = runs
    cgan(data, tmp_path / "resumed", "--epochs", "1", processes=2)
    cgan(data, tmp_path / "resumed", "--epochs", "3", "--resume", processes=2)
    for net in ("G", "D"):
        torch.testing.assert_close(weights(tmp_path / "resumed", net), weights(root / "two", net))


MIRRORED = """
import sys
sys.path.insert(0, {root!r})
import audio_data as ad
with ad.native_info_logs_hidden():
    import tensorflow as tf
# Two logical CPU devices, configured before TensorFlow initialises: what MirroredStrategy
# would find on a machine with two GPUs.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import train_classifier
sys.exit(train_classifier.main(sys.argv[1:]))
"""


def test_classifier_trains_on_two_devices_with_mirrored_strategy(tmp_path):
    data = make_tone_dataset(tmp_path / "train", classes=("low", "mid", "high"), per_class=12)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED.format(root=str(ROOT)))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(script), "--train-dir", str(data), "--test-dir", str(data / "low"),
                          "--out", str(out), "--sr", "8000", "--duration", "0.5", "--n-mels", "16", "--n-fft", "256",
                          "--hop-length", "128", "--width", "8", "--batch-size", "4", "--workers", "1",
                          "--epochs", "25", "--seed", "1", "--val-split", "0.2", "--ensemble", "1"],
                         capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "2 replicas (MirroredStrategy), 8 clips a step" in res.stdout
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + len({line.split(",")[0] for line in history[1:]})  # each epoch logged once
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["val_accuracy"] >= 0.8  # it learned, not only ran
    assert len((out / "submission_cnn_v2.csv").read_text().splitlines()) == 1 + 12
    assert not [p for p in out.rglob("*") if ".part-" in p.name]

