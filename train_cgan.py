"""Train a class-conditional GAN on mel spectrograms of labelled clips; write new clips per class.

    python train_cgan.py --data-dir data/train --epochs 100

Clips live in one folder per class (data/train/<class>/*.wav). Every clip is
resampled to --sr and padded or cropped to --duration seconds; its log-mel
spectrogram, scaled to [-1, 1], is what the GAN learns. Generated spectrograms
are turned back into sound with torchaudio's InverseMelScale and Griffin-Lim, at
the same --sr the spectrograms were made at.

Writes, to --out: cgan_checkpoint.pt (every epoch; --resume continues from it),
losses.csv, losses.png, samples/epoch_NNNN.png (one row per class),
generated/<class>/<class>_NNN.wav, generated/index.html and generated_mels.png.

Several GPUs or machines: the same command under torchrun, e.g.
    torchrun --standalone --nproc-per-node 4 train_cgan.py --data-dir data/train
trains data-parallel (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) on the
same global --batch-size, split between the processes.
"""
import argparse
import base64
import contextlib
import datetime
import html
import io
import os
import random
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchaudio  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from torch.optim.swa_utils import AveragedModel  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

import audio_data as ad  # noqa: E402
from cgan_model import Discriminator, Generator  # noqa: E402

CHECKPOINT = "cgan_checkpoint.pt"
CHECKPOINT_FORMAT = "audio-clip-ml/cgan/2"  # 2: plain types only, loadable with weights_only=True
DYNAMIC_RANGE_DB = 80.0  # spectrogram levels kept below each data set's loudest bin
BIN_SPREAD = 3.0  # with --norm bin, +-1 is this many standard deviations of a band's level


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data-dir", default="data/train", help="one sub-folder of clips per class")
    g.add_argument("--out", default="outputs", help="folder for checkpoint, plots and generated clips")
    g.add_argument("--workers", type=int, default=None, help=ad.WORKERS_HELP)
    g = p.add_argument_group("features")
    g.add_argument("--sr", type=int, default=22050, help="sample rate of the spectrograms and of the written clips")
    g.add_argument("--duration", type=float, default=2.0, help="seconds per clip; the frame count derives from it")
    g.add_argument("--n-mels", type=int, default=128, help="mel bands")
    g.add_argument("--n-fft", type=int, default=1024, help="STFT window length in samples")
    g.add_argument("--hop-length", type=int, default=256, help="STFT hop in samples")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--batch-size", type=int, default=32,
                   help="clips per step in all: under torchrun, split evenly between the processes")
    g.add_argument("--latent-dim", type=int, default=100, help="size of the noise vector")
    g.add_argument("--width", type=int, default=32,
                   help="base channel count of both models (their layers use 1x to 8x it); compute grows with its square")
    g.add_argument("--loss", choices=["hinge", "bce", "wgan-gp"], default="hinge",
                   help="hinge: stable with spectral norm; bce: the classic GAN loss; wgan-gp: Wasserstein with gradient penalty")
    g.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of the generator")
    g.add_argument("--lr-d", type=float, default=None,
                   help="Adam learning rate of the discriminator (default: --lr; higher is the two time-scale rule)")
    g.add_argument("--norm", choices=["dataset", "bin"], default="dataset",
                   help="how dB levels map to [-1, 1]: one range for the data set, or per mel band "
                   "(its mean and spread), so quiet high bands matter as much as loud low ones")
    g.add_argument("--upsample", choices=["transposed", "nearest"], default="transposed",
                   help="the generator's upsampling: ConvTranspose2d, or nearest neighbour + conv (no checkerboard)")
    g.add_argument("--d-augment", type=float, default=0.5,
                   help="probability of each augmentation (time shift padded with silence, gain, band cutout) "
                   "applied to what D sees, real and fake alike; below 1 so D still learns the true distribution")
    g.add_argument("--d-positions", action="store_true",
                   help="give D each bin's frequency and time position (CoordConv), so it can judge where an onset is")
    g.add_argument("--ac-weight", type=float, default=0.0,
                   help="weight of D's auxiliary class head (AC-GAN) in both losses; 0: no head")
    g.add_argument("--r1", type=float, default=0.0, help="R1 gradient penalty on real clips (gamma); 0: off")
    g.add_argument("--mode-seeking", type=float, default=0.1,
                   help="weight of the mode-seeking term that keeps samples of a class diverse; 0 turns it off")
    g.add_argument("--ema", type=float, default=0.999, help="decay of the generator's moving average, used for sampling")
    g.add_argument("--sample-every", type=int, default=5, help="write a sample grid every N epochs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out (or --checkpoint)")
    g = p.add_argument_group("generation")
    g.add_argument("--samples-per-class", type=int, default=10, help="clips written per class")
    g.add_argument("--gl-iters", type=int, default=64, help="Griffin-Lim iterations")
    g.add_argument("--checkpoint", help="checkpoint to resume or generate from (default: OUT/cgan_checkpoint.pt)")
    g.add_argument("--generate-only", action="store_true", help="skip training: sample from --checkpoint")
    return p.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ad.DataError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(choice)


# ----------------------------------------------------------------------------
# Distributed: data-parallel under torchrun
# ----------------------------------------------------------------------------

class Cluster:
    """Where this process stands: rank 0 of 1 when run alone, else what torchrun set.

    Every process trains a replica on its share of each global batch and DDP
    averages the gradients; rank 0 alone writes files, the others wait at barriers.
    """

    def __init__(self, device_choice: str):
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if not self.distributed:
            self.rank, self.local_rank, self.world, self.device = 0, 0, 1, pick_device(device_choice)
            return
        cuda = device_choice != "cpu" and torch.cuda.is_available()
        if device_choice == "cuda" and not cuda:
            raise ad.DataError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        # D's first conv has one input channel, whose weight gradient comes with a stride DDP's
        # buckets do not expect: a copy per step, not an error; the warning would repeat per process.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # Rank 0 may spend long decoding a large data set while the others wait at a barrier.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=6))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def share(self, global_tensor):
        """This process's share of a tensor drawn for the whole global batch (rows rank, rank + world, ...).

        With the sampler's interleaved split, row i of the share belongs to this process's
        clip i: every random draw is as one process on the global batch would make it.
        """
        return global_tensor[self.rank::self.world]

    def mean(self, values: np.ndarray) -> np.ndarray:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).cpu().numpy()

    def check_replicas(self, *models):
        """Stop if the processes' models differ: DDP keeps replicas identical only while every
        gradient goes through its all-reduce, and a path around it would train N models silently."""
        if not self.distributed:
            return
        params = torch.cat([p.detach().double().flatten() for m in models for p in m.parameters()])
        probe = torch.randn(len(params), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        mine = torch.stack([params.sum(), params.square().sum(), params.cpu() @ probe]).to(self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if any(not torch.equal(every[0], other) for other in every[1:]):
            raise RuntimeError(f"the {self.world} processes' models have drifted apart: {torch.stack(every).tolist()}")

    def wrap(self, G, D):
        """DDP replicas of G and D (the originals are what gets saved and averaged)."""
        if not self.distributed:
            return G, D
        ids = [self.device.index] if self.device.type == "cuda" else None
        if self.device.type == "cuda":  # batch statistics over the global batch; CUDA only, so CPUs keep their own
            G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)  # in place: G's parameters stay the same objects
        # D's spectral norm updates its power-iteration buffers in place during forward:
        # syncing buffers at every forward would overwrite tensors autograd still needs.
        return DDP(G, device_ids=ids), DDP(D, device_ids=ids, forward_sync_buffers=False)

    def close(self):
        if self.distributed:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------
# Data: log-mels scaled to [-1, 1]
# ----------------------------------------------------------------------------

def load_spectrograms(args, cfg):
    """All usable clips as normalised spectrograms (N, 1, n_mels, n_frames), their labels and classes."""
    paths, labels = ad.find_labelled_clips(args.data_dir)
    feats = ad.extract_features(paths, cfg, Path(args.out) / "cache", desc="train", workers=args.workers)
    paths, labels, classes, rows = ad.keep_usable_classes(paths, labels, feats.ok)
    x = np.asarray(feats.x[rows])
    # The dB range is fixed per data set, not per clip, so relative loudness survives.
    top = float(np.ceil(x.max()))
    scale = {"top_db": top, "range_db": DYNAMIC_RANGE_DB}
    if args.norm == "bin":
        db = np.clip(x, top - DYNAMIC_RANGE_DB, top)
        scale["bin_mean"] = db.mean(axis=(0, 2)).tolist()
        scale["bin_db"] = (BIN_SPREAD * np.maximum(db.std(axis=(0, 2)), 1.0)).tolist()
    y = np.array([classes.index(c) for c in labels])
    return torch.from_numpy(normalise(x, scale)[:, None]).float(), torch.from_numpy(y), classes, scale


def bin_scale(scale, like):
    """dB per unit of the normalised scale and the dB level at 0: per mel band (a column) or one for all."""
    if "bin_mean" not in scale:
        return scale["range_db"] / 2, scale["top_db"] - scale["range_db"] / 2
    unit, centre = np.array(scale["bin_db"])[:, None], np.array(scale["bin_mean"])[:, None]
    if torch.is_tensor(like):
        return torch.from_numpy(unit).to(like), torch.from_numpy(centre).to(like)
    return unit.astype(like.dtype), centre.astype(like.dtype)


def normalise(db, scale):
    """dB log-mels (..., n_mels, n_frames) to the GAN's [-1, 1], within range_db below top_db."""
    unit, centre = bin_scale(scale, db)
    clipped = np.clip(db, scale["top_db"] - scale["range_db"], scale["top_db"])
    return np.clip((clipped - centre) / unit, -1, 1).astype(np.float32)


def denormalise(x, scale):
    unit, centre = bin_scale(scale, x)
    return x * unit + centre


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------

def d_loss(kind, real_logits, fake_logits):
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    return fake_logits.mean() - real_logits.mean()


def g_loss(kind, fake_logits):
    if kind == "bce":  # the non-saturating form: strong gradients while D is winning
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return -fake_logits.mean()


def mode_seeking_penalty(fake, fake2, z, z2):
    """MSGAN (Mao et al., 2019): penalise G when two noise vectors give the same spectrogram.

    Conditional GANs readily learn to ignore the noise and emit one sound per class;
    this term rewards output distance per unit of noise distance (fake and fake2 are
    G's outputs for z and z2, same labels).
    """
    ratio = (fake - fake2).abs().mean() / (z - z2).abs().mean()
    return 1.0 / (ratio + 1e-5)


def interpolate(real, fake):
    """Random points between real and fake clips, where WGAN-GP holds D's gradient norm at 1."""
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    return (eps * real + (1 - eps) * fake).requires_grad_(True)


def gradient_penalty(logits, inputs, target: float):
    """Mean squared distance of the norm of d(logits)/d(inputs) from `target` (WGAN-GP: 1; R1: 0)."""
    grad, = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - target) ** 2).mean()


class AugmentForD:
    """Differentiable augmentation of what D sees (DiffAugment, ADA): fights D over-fitting,
    the usual cause of collapse on small data sets.

    Each clip, real or fake, independently gets each of a time shift (the gap
    filled with silence, never wrapped around), a gain and a cut-out band of
    frequencies and of frames, each with probability p. With p < 1 the clean
    spectrogram stays the most likely thing D sees, so the augmentation cannot
    leak into what G learns (Karras et al., 2020).
    """

    def __init__(self, p: float, scale: dict, n_mels: int, max_shift=0.125, gain_db=6.0, cutout=0.125,
                 cluster=None):
        self.p, self.max_shift, self.cutout, self.cluster = p, max_shift, cutout, cluster
        unit, _ = bin_scale(scale, torch.zeros(1))
        self.floor = torch.as_tensor(normalise(np.full((n_mels, 1), scale["top_db"] - scale["range_db"]), scale))
        self.gain = gain_db / torch.as_tensor(unit, dtype=torch.float32)

    def __call__(self, x):
        if self.p <= 0:
            return x
        n, _, h, w = x.shape
        floor, gain = self.floor.to(x.device), self.gain.to(x.device)
        # Drawn for the whole global batch, then this process's share (see Cluster.share).
        world, share = (self.cluster.world, self.cluster.share) if self.cluster else (1, lambda t: t)
        rand = lambda: share(torch.rand(n * world, 1, 1, 1)).to(x.device)  # noqa: E731
        chosen = lambda: rand() < self.p  # noqa: E731
        # Shift: frame t reads frame t - s; what comes from outside the clip is silence.
        s = ((rand() * 2 - 1) * self.max_shift * w).round().long() * chosen()
        src = torch.arange(w, device=x.device).view(1, 1, 1, w) - s
        shifted = x.gather(3, src.clamp(0, w - 1).expand(n, 1, h, w))
        x = torch.where((src < 0) | (src >= w), floor, shifted)
        level = (rand() * 2 - 1) * chosen()
        x = torch.minimum(torch.maximum(x + level * gain, floor), torch.ones_like(x))
        for axis, size in ((2, h), (3, w)):
            width = (rand() * self.cutout * size).long() * chosen()
            start = (rand() * (size - width + 1)).long()
            pos = torch.arange(size, device=x.device).view((-1, 1) if axis == 2 else (1, -1))
            x = torch.where((pos >= start) & (pos < start + width), floor, x)
        return x


# ----------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------

def save_checkpoint(path, G, D, ema, opt_g, opt_d, epoch, history, meta):
    """Everything a resumed run needs, as tensors and plain types only.

    So the file loads with torch.load(weights_only=True): a checkpoint is data that
    travels between people, and loading one must not be able to run code.
    """
    np_state = np.random.get_state()
    state = {"format": CHECKPOINT_FORMAT, "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict(),
             "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "epoch": epoch, "history": history,
             "meta": meta, "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                   "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)),
                                             "pos": np_state[2], "has_gauss": np_state[3], "gauss": np_state[4]},
                                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    with ad.atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    """A checkpoint of this script, read without running anything in the file."""
    path = Path(path)
    if not path.exists():
        raise ad.DataError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign, corrupt or truncated files, and pickles that would run code
        raise not_our_checkpoint(path, _reason(e)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise not_our_checkpoint(path, "no marker of this script's checkpoint format")
    try:  # the models it describes must be ours, with its weights fitting them
        build_models(state["meta"], torch.device("cpu"), state)
    except Exception as e:
        raise not_our_checkpoint(path, f"its models do not fit: {_reason(e)}") from None
    return state


def not_our_checkpoint(path, reason: str) -> ad.DataError:
    return ad.DataError(f"{path} is not a cGAN checkpoint of this script ({reason})")


def _reason(e: Exception) -> str:
    # torch's refusal of a pickled object is many lines; the one naming the object is the reason.
    refused = [line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()]
    return (refused[0] if refused else ad.short_reason(e))[:200]


def build_models(meta, device, state=None):
    """Generator, discriminator and the generator's moving average; with the weights of `state` if given."""
    cfg = ad.FeatureConfig.from_dict(meta["features"])
    n_classes, args = len(meta["classes"]), meta["model"]
    # Checkpoints from before these options existed describe the original models.
    G = Generator(n_classes, cfg.n_mels, cfg.n_frames, args["latent_dim"], args["width"],
                  upsample=args.get("upsample", "transposed"))
    D = Discriminator(n_classes, args["width"], positions=args.get("d_positions", False),
                      classifier=args.get("ac_weight", 0.0) > 0)
    ema = AveragedModel(G, avg_fn=ema_with_warmup(args["ema"]), use_buffers=True)
    if state is not None:
        for model, key in ((G, "G"), (D, "D"), (ema, "ema")):
            model.load_state_dict(state[key])
    return G.to(device), D.to(device), ema.to(device)


def ema_with_warmup(decay: float):
    """Moving average whose decay grows to `decay` as updates accumulate: with a fixed 0.999,
    a short run's average would still be mostly the untrained initial weights."""
    def average(averaged, current, num_averaged):
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        return d * averaged + (1 - d) * current
    return average


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

def train_step(G, D, ema, opt_g, opt_d, real, labels, z, z2, loss_kind, mode_seeking, augment,
               ac_weight=0.0, r1=0.0) -> tuple[float, float]:
    """One discriminator update, then one generator update and its moving average; returns both losses.

    G and D may be DDP replicas: each takes one forward and one backward per update
    (real and fake go through D as one batch; the mode-seeking pair through G as
    one), and D's gradients in the generator's update, which are thrown away, are
    not averaged between processes (no_sync). `z2` is the mode-seeking term's second
    noise, for the first len(z2) clips. `ema` averages the unwrapped generator.
    """
    n = len(real)
    both = G(torch.cat([z, z2]), torch.cat([labels, labels[: len(z2)]]))
    fake, fake2 = both[:n], both[n:]
    real_in = augment(real).detach().requires_grad_(r1 > 0)
    inputs = [real_in, augment(fake.detach())]
    if loss_kind == "wgan-gp":
        inputs.append(interpolate(real, fake.detach()))
    logits, classes = D(torch.cat(inputs), labels.repeat(len(inputs)), with_classes=True)
    loss_d = d_loss(loss_kind, logits[:n], logits[n:2 * n])
    if ac_weight:  # the class head learns from real clips only, so G cannot teach it its own mistakes
        loss_d = loss_d + ac_weight * F.cross_entropy(classes[:n], labels)
    if r1 > 0:  # Mescheder et al., 2018: keep D flat around the real data
        loss_d = loss_d + r1 / 2 * gradient_penalty(logits[:n], real_in, 0.0)
    if loss_kind == "wgan-gp":
        loss_d = loss_d + 10.0 * gradient_penalty(logits[2 * n:], inputs[2], 1.0)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    with D.no_sync() if isinstance(D, DDP) else contextlib.nullcontext():
        fake_logits, fake_classes = D(augment(fake), labels, with_classes=True)
        loss_g = g_loss(loss_kind, fake_logits)
        if ac_weight:
            loss_g = loss_g + ac_weight * F.cross_entropy(fake_classes, labels)
        if mode_seeking > 0 and len(z2):
            loss_g = loss_g + mode_seeking * mode_seeking_penalty(fake[: len(z2)], fake2, z[: len(z2)], z2)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    opt_g.step()
    ema.update_parameters(G.module if isinstance(G, DDP) else G)
    return loss_d.item(), loss_g.item()


def feature_config(args) -> ad.FeatureConfig:
    return ad.FeatureConfig(sr=args.sr, duration=args.duration, n_fft=args.n_fft, hop_length=args.hop_length,
                            n_mels=args.n_mels)


def train(args, out: Path, cluster: Cluster):
    cfg = feature_config(args)
    checkpoint_path = Path(args.checkpoint or out / CHECKPOINT)
    state = load_checkpoint(checkpoint_path) if args.resume else None
    if state:
        cfg = ad.FeatureConfig.from_dict(state["meta"]["features"])  # the run's own settings win
    elif checkpoint_path.exists():
        ad.warn(f"{checkpoint_path} exists: starting afresh; it is replaced after the first epoch "
                f"(use --resume to continue it instead)")
    device = cluster.device
    if args.batch_size % cluster.world:
        raise ad.DataError(f"--batch-size {args.batch_size} does not split evenly between {cluster.world} processes")
    # The first process of each machine decodes the clips into its cache; the others then read it.
    if cluster.local_rank != 0:
        cluster.barrier()
    x, y, classes, scale = load_spectrograms(args, cfg)
    if cluster.local_rank == 0:
        cluster.barrier()
    if state and state["meta"]["classes"] != classes:
        raise ad.DataError(f"the classes in {args.data_dir} differ from the checkpoint's: {state['meta']['classes']}")
    meta = state["meta"] if state else {
        "classes": classes, "features": cfg.to_dict(), "scale": scale,
        "model": {"latent_dim": args.latent_dim, "width": args.width, "ema": args.ema, "loss": args.loss,
                  "upsample": args.upsample, "d_positions": args.d_positions, "ac_weight": args.ac_weight}}
    loss_kind = meta["model"]["loss"]
    G, D, ema = build_models(meta, device, state)
    G_train, D_train = cluster.wrap(G, D)
    # (0.5, 0.999) is the classic DCGAN setting for BCE; spectral-norm hinge and WGAN-GP train
    # better without first-moment momentum (SNGAN, BigGAN).
    betas = (0.5, 0.999) if loss_kind == "bce" else (0.0, 0.9)
    opt_g = torch.optim.Adam(G.parameters(), args.lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), args.lr_d or args.lr, betas=betas)
    history, start_epoch = [], 1
    if state:
        try:
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
            restore_rng(state["rng"])
        except Exception as e:
            raise not_our_checkpoint(checkpoint_path, f"its training state does not fit: {_reason(e)}") from None
        print(f"resuming {checkpoint_path} after epoch {state['epoch']}")

    # The sampler shuffles by (seed, epoch) and deals the clips out in turn: the processes'
    # batches together are the batch one process would take (so a resumed or distributed
    # run sees the data in the same order). Alone, it is one process's sampler.
    local_batch = args.batch_size // cluster.world
    sampler = DistributedSampler(TensorDataset(x, y), num_replicas=cluster.world, rank=cluster.rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=local_batch, sampler=sampler,
                        drop_last=len(sampler) > local_batch)
    latent = meta["model"]["latent_dim"]
    if cluster.main:
        print(f"{len(x)} clips in {len(classes)} classes ({', '.join(classes)}); spectrograms {cfg.n_mels}x{cfg.n_frames}; "
          f"G {sum(p.numel() for p in G.parameters()):,} / D {sum(p.numel() for p in D.parameters()):,} parameters; "
              f"{loss_kind} loss on {device}" + (f", {cluster.world} processes of {local_batch} clips a step"
                                                 if cluster.distributed else ""))
    augment = AugmentForD(args.d_augment, meta["scale"], cfg.n_mels, cluster=cluster)
    fixed_z = torch.randn(len(classes) * 4, meta["model"]["latent_dim"], generator=torch.Generator().manual_seed(args.seed))
    fixed_labels = torch.arange(len(classes)).repeat_interleave(4)
    for epoch in range(start_epoch, args.epochs + 1):
        sampler.set_epoch(epoch)
        sums = np.zeros(3)
        # disable=None: a live bar on a terminal, silence in logs (a summary line follows each epoch).
        for real, labels in tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
                                 disable=None if cluster.main else True):
            # Noise drawn for the global batch; each process takes its share.
            z = cluster.share(torch.randn(len(real) * cluster.world, latent)).to(device)
            z2 = cluster.share(torch.randn(len(real) * cluster.world // 2 if args.mode_seeking > 0 else 0, latent))
            sums += [*train_step(G_train, D_train, ema, opt_g, opt_d, real.to(device), labels.to(device), z,
                                 z2.to(device), loss_kind, args.mode_seeking, augment,
                                 meta["model"].get("ac_weight", 0.0), args.r1), 1]
        sums = cluster.mean(sums)
        cluster.check_replicas(G, D)
        history.append({"epoch": epoch, "loss_d": float(sums[0] / sums[2]), "loss_g": float(sums[1] / sums[2])})
        if not cluster.main:
            cluster.barrier()  # while rank 0 writes the epoch's files
            continue
        save_checkpoint(checkpoint_path, G, D, ema, opt_g, opt_d, epoch, history, meta)
        write_losses(history, out)
        if epoch % args.sample_every == 0 or epoch == args.epochs:
            with torch.no_grad():
                ema.eval()
                grid = ema(fixed_z.to(device), fixed_labels.to(device)).cpu()
            plot_mels(denormalise(grid[:, 0].numpy(), meta["scale"]), classes, 4, out / "samples" / f"epoch_{epoch:04d}.png",
                      f"epoch {epoch}")
        print(f"epoch {epoch}/{args.epochs}: loss D {history[-1]['loss_d']:.3f}, G {history[-1]['loss_g']:.3f}")
        cluster.barrier()
    return checkpoint_path


def restore_rng(rng):
    torch.set_rng_state(rng["torch"])
    np_state = rng["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------

def write_losses(history, out: Path):
    frame = pd.DataFrame(history)
    with ad.atomic_output(out / "losses.csv") as tmp:
        frame.to_csv(tmp, index=False)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(frame.epoch, frame.loss_d, label="discriminator")
    ax.plot(frame.epoch, frame.loss_g, label="generator")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    with ad.atomic_output(out / "losses.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def plot_mels(mels_db, classes, per_class, path, title):
    """A grid of spectrograms, one row per class."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(2.2 * per_class, 1.5 * len(classes)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(mels_db[i], origin="lower", aspect="auto", cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        if i % per_class == 0:
            ax.set_ylabel(classes[i // per_class], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with ad.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------
# Generation: spectrogram -> sound
# ----------------------------------------------------------------------------

def mel_to_audio(mels_db: torch.Tensor, cfg: ad.FeatureConfig, gl_iters: int) -> torch.Tensor:
    """Invert a batch of dB log-mels (as audio_data.log_mel makes them) to waveforms, on the CPU.

    InverseMelScale solves the filterbank's least-squares problem in float64 (gelsd:
    the default driver fails as 'not full rank' for many mels; it is CPU-only), with
    the frames of many clips side by side: one solve for all of them instead of
    one per clip. Griffin-Lim with momentum then estimates the phase in float32,
    where its STFTs run 2.7x faster than in float64 and converge as far. Clips go
    through in chunks of about half a million spectrogram bins: generating
    thousands of clips needs no more memory than a few, and this size ran 12%
    faster per clip than a batch of 12 two-second clips, or one clip at a time.
    """
    n_mels, n_frames = mels_db.shape[1:]
    n_stft = cfg.n_fft // 2 + 1
    inverse_mel = torchaudio.transforms.InverseMelScale(
        n_stft=n_stft, n_mels=n_mels, sample_rate=cfg.sr, f_min=cfg.fmin, f_max=cfg.fmax,
        norm="slaney", mel_scale=cfg.mel_scale, driver="gelsd").double()
    griffin_lim = torchaudio.transforms.GriffinLim(
        n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0, n_iter=gl_iters, momentum=0.99)

    def invert(chunk):
        side_by_side = torch.pow(10.0, chunk.double() / 10.0).transpose(0, 1).reshape(n_mels, -1)
        power = inverse_mel(side_by_side).reshape(n_stft, len(chunk), n_frames).transpose(0, 1)
        return griffin_lim(power.float())

    with torch.no_grad():
        return torch.cat([invert(chunk) for chunk in mels_db.split(max(1, 2**19 // (n_stft * n_frames)))])


def generate(checkpoint_path, out: Path, samples_per_class: int, gl_iters: int, seed: int, data_dir=None):
    state = load_checkpoint(checkpoint_path)
    meta = state["meta"]
    cfg = ad.FeatureConfig.from_dict(meta["features"])
    classes = meta["classes"]
    _, _, ema = build_models(meta, torch.device("cpu"), state)
    ema.eval()
    torch.manual_seed(seed)
    labels = torch.arange(len(classes)).repeat_interleave(samples_per_class)
    with torch.no_grad():
        mels = ema(torch.randn(len(labels), meta["model"]["latent_dim"]), labels)[:, 0]
    mels_db = denormalise(mels, meta["scale"])
    waves = mel_to_audio(mels_db, cfg, gl_iters)
    waves = torch.nan_to_num(waves)
    written = {name: [] for name in classes}
    for wave, label, i in zip(waves.numpy(), labels.tolist(), range(len(labels))):
        wave = ad.fix_length(wave, cfg.n_samples)
        wave = 0.89 * wave / max(np.abs(wave).max(), 1e-9)  # peak at -1 dBFS: audible, never clipped
        name = classes[label]
        path = out / "generated" / name / f"{name}_{i % samples_per_class:03d}.wav"
        with ad.atomic_output(path) as tmp:
            sf.write(tmp, wave, cfg.sr, subtype="PCM_16")
        written[name].append((path, mels_db[i].numpy()))
    shown = min(samples_per_class, 4)
    pick = torch.cat([torch.arange(c * samples_per_class, c * samples_per_class + shown) for c in range(len(classes))])
    plot_mels(mels_db[pick].numpy(), classes, shown, out / "generated_mels.png", "generated")
    write_listening_page(out / "generated", written, real_examples(data_dir, classes, cfg), meta["scale"],
                         cfg.sr)
    return len(labels)


# ----------------------------------------------------------------------------
# Listening page: real and generated clips side by side
# ----------------------------------------------------------------------------

def real_examples(data_dir, classes, cfg, per_class: int = 4) -> dict:
    """A few training clips per class (spread over each class's files), decoded as the GAN saw them."""
    if not data_dir or not Path(data_dir).is_dir():
        return {}
    try:
        paths, labels = ad.find_labelled_clips(data_dir)
    except ad.DataError:
        return {}
    examples = {}
    for name in classes:
        mine = [p for p, label in zip(paths, labels) if label == name]
        clips = []
        for path in [mine[i] for i in np.unique(np.linspace(0, len(mine) - 1, per_class).round().astype(int))] if mine else []:
            try:
                wave = ad.load_clip(path, cfg.sr, cfg.duration)
            except ad.BadAudio:
                continue  # already reported when the features were made
            clips.append((path.name, wave, ad.log_mel(wave, cfg)))
        examples[name] = clips
    return examples


def data_uri(kind: str, write) -> str:
    buffer = io.BytesIO()
    write(buffer)
    return f"data:{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def spectrogram_uri(mel_db, scale) -> str:
    low, high = scale["top_db"] - scale["range_db"], scale["top_db"]
    return data_uri("image/png", lambda f: plt.imsave(f, np.clip(mel_db, low, high)[::-1], vmin=low, vmax=high,
                                                        cmap="magma", format="png"))


def write_listening_page(folder: Path, generated: dict, real: dict, scale: dict, sr: int):
    """folder/index.html: per class, real training clips above generated ones, each a spectrogram and a player.

    Generated clips are linked by relative path; the real ones (decoded, at the GAN's
    rate and length) and every image are embedded, so the page works offline, from
    the file system, and nothing but .wav files of generated clips sits in the class folders.
    """
    def card(title, image, audio):
        return (f'<figure><img src="{image}" alt="spectrogram of {html.escape(title)}">'
                f'<audio controls preload="metadata" src="{audio}"></audio>'
                f'<figcaption>{html.escape(title)}</figcaption></figure>')

    sections = []
    for name, clips in generated.items():
        real_cards = "".join(
            card(title, spectrogram_uri(mel, scale),
                 data_uri("audio/wav", lambda f, w=wave: sf.write(f, w, sr, format="WAV", subtype="PCM_16")))
            for title, wave, mel in real.get(name, []))
        gen_cards = "".join(card(path.name, spectrogram_uri(mel, scale), f"{quote(name)}/{quote(path.name)}")
                            for path, mel in clips)
        sections.append(f'<section><h2>{html.escape(name)}</h2>'
                        + (f'<h3>real (training clips)</h3><div class="row">{real_cards}</div>' if real_cards else "")
                        + f'<h3>generated</h3><div class="row">{gen_cards}</div></section>')
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Generated clips</title><style>"
            "body{font-family:sans-serif;margin:1em}.row{display:flex;flex-wrap:wrap;gap:.8em}"
            "figure{margin:0;width:200px}img{width:200px;height:120px;image-rendering:pixelated;display:block}"
            "audio{width:200px}figcaption{font-size:.8em;color:#555}</style></head><body>"
            "<h1>Generated clips</h1><p>Per class: real training clips, then generated ones. Spectrograms: "
            "log-mel, low frequencies at the bottom, time to the right.</p>"
            + "".join(sections) + "</body></html>\n")
    with ad.atomic_output(folder / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def run(args):
    start = time.time()
    out = Path(args.out)
    cluster = Cluster(args.device)
    try:
        if cluster.main:
            ad.remove_stale_temporaries(out, out / "cache", out / "samples", out / "generated",
                                        *(out / "generated").glob("*/"), Path(args.checkpoint or out).parent)
        # The same seed in every process: the same initial weights, and the same draws for the
        # global batch, of which each process takes its share.
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        if args.generate_only:
            checkpoint_path = Path(args.checkpoint or out / CHECKPOINT)
        else:
            checkpoint_path = train(args, out, cluster)
    finally:
        cluster.close()
    if not cluster.main:
        return
    n = generate(checkpoint_path, out, args.samples_per_class, args.gl_iters, args.seed, args.data_dir)
    print(f"\nwrote {n} clips to {out / 'generated'}/<class>/, spectrograms in {out / 'generated_mels.png'}; "
          f"listen in {out / 'generated' / 'index.html'}")
    if not args.generate_only:
        print(f"checkpoint {checkpoint_path}; losses in {out / 'losses.png'}; sample grids in {out / 'samples'}")
    print(f"done in {time.time() - start:.0f} s")


def main(argv=None) -> int:
    return ad.run_script(run, parse_args(argv), interrupted_hint="continue with the same command plus --resume")


if __name__ == "__main__":
    sys.exit(main())
