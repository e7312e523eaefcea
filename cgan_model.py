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


class Generator(nn.Module):
    """Noise + class label -> normalised log-mel spectrogram in [-1, 1], shape (1, n_mels, n_frames).

    A linear layer makes a small seed image, then `n_up` ConvTranspose2d layers
    each double its height and width, with class-conditional batch norm between them. The seed is sized so the result is at least
    (n_mels, n_frames), then cropped: any spectrogram shape works, not only powers of two.
    """

    def __init__(self, n_classes: int, n_mels: int, n_frames: int, latent_dim: int = 100,
                 width: int = 64, n_up: int = 4):
        super().__init__()
        self.n_mels, self.n_frames, self.latent_dim = n_mels, n_frames, latent_dim
        self.h0, self.w0 = math.ceil(n_mels / 2**n_up), math.ceil(n_frames / 2**n_up)
        self.c0 = width * 2 ** (n_up - 1)
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(2 * latent_dim, self.c0 * self.h0 * self.w0),
                                     nn.BatchNorm1d(self.c0 * self.h0 * self.w0), nn.ReLU(True))
        channels = [self.c0 // 2**i for i in range(n_up)]
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False) for c in channels[:-1])
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(c // 2, n_classes) for c in channels[:-1])
        self.to_mel = nn.ConvTranspose2d(channels[-1], 1, 4, 2, 1)

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

    def __init__(self, n_classes: int, width: int = 64, n_down: int = 4):
        super().__init__()
        layers, c_in = [], 1
        for i in range(n_down):
            c_out = width * 2 ** min(i, 3)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(c_in, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, c_in))

    def forward(self, x, labels):
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)
