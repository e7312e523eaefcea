"""Generator and discriminator of train_cgan.py, sized from the spectrogram shape."""
import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose scale and shift are learned per class (as in SNGAN and BigGAN).

    The label then steers every layer of the generator, not only its input.
    """

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(n_classes, channels)
        self.bias = nn.Embedding(n_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, labels):
        return self.norm(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


def upsampling(c_in: int, c_out: int, kind: str, bias: bool) -> nn.Module:
    """Double height and width: a stride-2 ConvTranspose2d, or nearest-neighbour upsampling and a 3x3 conv.

    A 4x4 stride-2 transposed conv covers output pixels unevenly unless its weights
    learn not to, which leaves checkerboard patterns (Odena et al., 2016); in a
    spectrogram they are a comb in frequency and a flutter in time.
    """
    if kind == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias))


class Generator(nn.Module):
    """Noise + class label -> normalised log-mel spectrogram in [-1, 1], shape (1, n_mels, n_frames).

    A linear layer makes a small seed image, then `n_up` ConvTranspose2d layers
    each double its height and width, with class-conditional batch norm between them. The seed is sized so the result is at least
    (n_mels, n_frames), then cropped: any spectrogram shape works, not only powers of two.
    """

    def __init__(self, n_classes: int, n_mels: int, n_frames: int, latent_dim: int = 100,
                 width: int = 64, n_up: int = 4, upsample: str = "transposed"):
        super().__init__()
        self.n_mels, self.n_frames, self.latent_dim = n_mels, n_frames, latent_dim
        self.h0, self.w0 = math.ceil(n_mels / 2**n_up), math.ceil(n_frames / 2**n_up)
        self.c0 = width * 2 ** (n_up - 1)
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(2 * latent_dim, self.c0 * self.h0 * self.w0),
                                     nn.BatchNorm1d(self.c0 * self.h0 * self.w0), nn.ReLU(True))
        channels = [self.c0 // 2**i for i in range(n_up)]
        self.ups = nn.ModuleList(upsampling(c, c // 2, upsample, bias=False) for c in channels[:-1])
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(c // 2, n_classes) for c in channels[:-1])
        self.to_mel = upsampling(channels[-1], 1, upsample, bias=True)

    def forward(self, z, labels):
        x = self.project(torch.cat([z, self.embed(labels)], dim=1)).view(-1, self.c0, self.h0, self.w0)
        for up, norm in zip(self.ups, self.norms):
            x = torch.relu(norm(up(x), labels))
        return torch.tanh(self.to_mel(x))[:, :, : self.n_mels, : self.n_frames]


class Discriminator(nn.Module):
    """Spectrogram + class label -> realness score (a logit).

    Strided Conv2d layers with LeakyReLU(0.2) and spectral normalisation, then
    projection conditioning (Miyato & Koyama, 2018): the score is a plain linear
    read-out plus the dot product of the features with a learned class embedding,
    which conditions far more firmly than a label stacked as a second input channel.
    """

    def __init__(self, n_classes: int, width: int = 64, n_down: int = 4, positions: bool = False,
                 classifier: bool = False):
        super().__init__()
        self.positions = positions
        layers, c_in = [], 3 if positions else 1
        for i in range(n_down):
            c_out = width * 2 ** min(i, 3)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, c_in))
        self.classify = spectral_norm(nn.Linear(c_in, n_classes)) if classifier else None

    def forward(self, x, labels, with_classes: bool = False):
        """The realness logit; with_classes: also the class logits (AC-GAN; None without the head)."""
        if self.positions:
            x = torch.cat([x, *position_channels(x)], dim=1)
        h = self.features(x).sum(dim=(2, 3))
        logit = self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)
        if not with_classes:
            return logit
        return logit, self.classify(h) if self.classify is not None else None


def position_channels(x):
    """Two extra input channels holding each bin's frequency and time position in [-1, 1] (CoordConv).

    Convolutions summed over the whole image cannot tell where a pattern is; for
    one-shots, where matters: the attack belongs at the first frame, a kick's energy low.
    """
    n, _, h, w = x.shape
    freq = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[None, None, :, None].expand(n, 1, h, w)
    time = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, None, None, :].expand(n, 1, h, w)
    return freq, time
