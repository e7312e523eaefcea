"""Batch augmentation of log-mel spectrograms with TensorFlow ops, for train_classifier.py.

Pitch shift and speed change are done on the spectrogram itself, as resampling
of its frequency and time axes, instead of on the waveform with a phase vocoder
(librosa's pitch_shift/time_stretch) followed by a fresh STFT for every clip.
The result is the same kind of variation at a tiny fraction of the cost, for a
whole batch at once, on the GPU when there is one. Every random draw is
stateless and seeded per batch, so a run is reproducible from its --seed.

All inputs are (batch, n_mels, n_frames) float32 in dB, as audio_data.log_mel gives.
"""
import math

import numpy as np
import tensorflow as tf

LN10_OVER_10 = math.log(10.0) / 10.0


AUGMENTATIONS = ("pitch", "speed", "shift", "gain", "eq", "noise", "masks")


class SpecAugmenter:
    """Random pitch shift, speed change, time shift, gain, EQ, background noise and masks.

    `strength` scales every range at once: 0 switches augmentation off, 1 is the
    default, 2 doubles every range. `kinds` names the augmentations used (of
    AUGMENTATIONS); the others are off. `share` is the share of clips augmented;
    the others pass as they are.
    """

    def __init__(self, cfg, strength: float = 1.0, kinds=AUGMENTATIONS, share: float = 1.0, semitones: float = 2.0,
                 stretch: float = 0.15, shift: float = 0.1, gain_db: float = 6.0, tilt_db: float = 6.0,
                 freq_mask: float = 0.1, time_mask: float = 0.1, noise_share: float = 0.5):
        unknown = set(kinds) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if not 0 <= share <= 1:
            raise ValueError(f"the share of clips augmented must be between 0 and 1, not {share}")
        self.share = share
        on = {k: strength * (k in kinds) for k in AUGMENTATIONS}
        self.n_mels, self.n_frames = cfg.n_mels, cfg.n_frames
        self.semitones = semitones * on["pitch"]
        self.stretch = stretch * on["speed"]
        self.shift = shift * on["shift"]
        self.gain_db = gain_db * on["gain"]
        self.tilt_db = tilt_db * on["eq"]
        self.noise_share = noise_share * min(1.0, on["noise"])
        self.freq_mask = int(round(freq_mask * on["masks"] * cfg.n_mels))
        self.time_mask = int(round(time_mask * on["masks"] * cfg.n_frames))
        self.enabled = strength > 0 and bool(kinds) and share > 0
        self.pitch_table = tf.constant(_pitch_shift_table(cfg, self.semitones), tf.float32)

    def __call__(self, x, seed):
        """Augment a batch; `seed` is a shape-[2] integer tensor, different for every batch."""
        if not self.enabled:
            return x
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=8))
        batch = tf.shape(x)[0]
        clean = x
        floor = tf.reduce_min(x, axis=[1, 2], keepdims=True)
        x = self._pitch_shift(x, floor, seeds[0], batch)
        x = self._stretch_and_shift(x, floor, seeds[1], batch)
        x = self._gain_and_tilt(x, seeds[2], batch)
        x = self._background_noise(x, seeds[3], batch)
        x = _mask(x, axis=1, width=self.freq_mask, seed=seeds[4], batch=batch)
        x = _mask(x, axis=2, width=self.time_mask, seed=seeds[5], batch=batch)
        if self.share < 1:
            augmented = tf.random.stateless_uniform([batch, 1, 1], seeds[6]) < self.share
            x = tf.where(augmented, x, clean)
        return x

    def _pitch_shift(self, x, floor, seed, batch):
        """Move every mel band to the band `2**(s/12)` times its frequency (a precomputed row per step)."""
        row = tf.random.stateless_uniform([batch], seed, 0, self.pitch_table.shape[0], tf.int32)
        return _interpolate(x, tf.gather(self.pitch_table, row), axis=1, fill=floor)

    def _stretch_and_shift(self, x, floor, seed, batch):
        """Speed up or slow down (tempo) and shift in time: read frame t from frame t*rate + offset."""
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        rate = tf.exp(tf.random.stateless_uniform([batch, 1], s1, -1.0, 1.0) * math.log1p(self.stretch))
        offset = tf.random.stateless_uniform([batch, 1], s2, -1.0, 1.0) * self.shift * self.n_frames
        src = tf.range(self.n_frames, dtype=tf.float32)[None, :] * rate + offset
        return _interpolate(x, src, axis=2, fill=floor)

    def _gain_and_tilt(self, x, seed, batch):
        """A different level and microphone: overall gain plus a random spectral tilt and bump."""
        u = tf.random.stateless_uniform([batch, 4], seed, -1.0, 1.0)
        pos = tf.linspace(-1.0, 1.0, self.n_mels)[None, :]
        curve = (u[:, :1] * self.gain_db + u[:, 1:2] * self.tilt_db * pos
                 + u[:, 2:3] * self.tilt_db * 0.5 * tf.cos(math.pi * (pos + u[:, 3:4])))
        return x + curve[:, :, None]

    def _background_noise(self, x, seed, batch):
        """A share of the clips (half at strength 1) get a flat noise floor 25 to 60 dB below their peak."""
        s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        below = tf.random.stateless_uniform([batch, 1, 1], s1, 25.0, 60.0)
        apply = tf.random.stateless_uniform([batch, 1, 1], s2) < self.noise_share
        noise = tf.reduce_max(x, axis=[1, 2], keepdims=True) - below
        noisy = tf.math.reduce_logsumexp(tf.stack([x, tf.broadcast_to(noise, tf.shape(x))]) * LN10_OVER_10, 0) / LN10_OVER_10
        return tf.where(apply, noisy, x)


def mixup(x, y, seed, alpha: float):
    """Blend each example (and its one-hot label) with another one of the batch."""
    if alpha <= 0:
        return x, y
    s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch = tf.shape(x)[0]
    g1 = tf.random.stateless_gamma([batch], s1, alpha)
    g2 = tf.random.stateless_gamma([batch], s2, alpha)
    lam = g1 / (g1 + g2 + 1e-9)
    lam = tf.maximum(lam, 1.0 - lam)  # keep the example itself dominant
    perm = tf.random.experimental.stateless_shuffle(tf.range(batch), s3)
    mixed_x = lam[:, None, None] * x + (1 - lam[:, None, None]) * tf.gather(x, perm)
    mixed_y = lam[:, None] * y + (1 - lam[:, None]) * tf.gather(y, perm)
    return mixed_x, mixed_y


def _pitch_shift_table(cfg, semitones: float, step: float = 0.1) -> np.ndarray:
    """Source mel-band position for every band, one row per pitch step in [-semitones, semitones].

    Mel bands are not evenly spaced in Hz, so the mapping is looked up with the
    same band centres audio_data.log_mel uses rather than derived as a shift.
    """
    centres = cfg.band_centres()
    steps = np.arange(-semitones, semitones + step / 2, step) if semitones > 0 else np.zeros(1)
    bands = np.arange(cfg.n_mels, dtype=np.float64)
    return np.stack([np.interp(centres / 2 ** (s / 12), centres, bands, left=-1.0, right=cfg.n_mels)
                     for s in steps]).astype(np.float32)


def _interpolate(x, src, axis: int, fill):
    """Linear interpolation of x along `axis` (1 or 2) at fractional positions src (batch, length).

    Positions outside the spectrogram read `fill` (the clip's own floor), as silence would.
    """
    size = tf.shape(x)[axis]
    lo = tf.floor(src)
    w = src - lo
    lo = tf.cast(lo, tf.int32)
    outside = (src < 0) | (src > tf.cast(size - 1, tf.float32))
    a = tf.gather(x, tf.clip_by_value(lo, 0, size - 1), axis=axis, batch_dims=1)
    b = tf.gather(x, tf.clip_by_value(lo + 1, 0, size - 1), axis=axis, batch_dims=1)
    expand = (lambda t: t[:, :, None]) if axis == 1 else (lambda t: t[:, None, :])
    out = a * (1 - expand(w)) + b * expand(w)
    return tf.where(expand(outside), fill, out)


def _mask(x, axis: int, width: int, seed, batch):
    """SpecAugment: replace a random band of `width` or fewer rows/columns with the clip's mean."""
    if width < 1:
        return x
    size = tf.shape(x)[axis]
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    w = tf.random.stateless_uniform([batch, 1], s1, 0, width + 1, tf.int32)
    start = tf.cast(tf.random.stateless_uniform([batch, 1], s2) * tf.cast(size - w, tf.float32), tf.int32)
    pos = tf.range(size)[None, :]
    inside = (pos >= start) & (pos < start + w)
    inside = inside[:, :, None] if axis == 1 else inside[:, None, :]
    return tf.where(inside, tf.reduce_mean(x, axis=[1, 2], keepdims=True), x)
