"""Spectrogram-domain augmentation: each transform does what its name says, reproducibly."""
import numpy as np
import pytest
import tensorflow as tf

import audio_data as ad
from spec_augment import SpecAugmenter, _interpolate, mixup

CFG = ad.FeatureConfig(sr=16000, duration=1.0, n_fft=512, hop_length=256, n_mels=40)


def tone_batch(freqs, cfg=CFG):
    t = np.arange(cfg.n_samples) / cfg.sr
    return np.stack([ad.log_mel((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32), cfg) for f in freqs])


def peak_band(x):
    return np.asarray(x).mean(axis=-1).argmax(axis=-1)


def test_pitch_shift_moves_a_tone_by_the_drawn_interval():
    aug = SpecAugmenter(CFG, semitones=12.0)
    x = tf.constant(tone_batch([500.0] * 64))
    shifted = aug._pitch_shift(x, tf.reduce_min(x, axis=[1, 2], keepdims=True), tf.constant([1, 2]), 64)
    octave_up, octave_down = tone_batch([1000.0, 250.0])
    bands = peak_band(shifted)
    assert bands.max() == pytest.approx(peak_band(octave_up[None])[0], abs=1)
    assert bands.min() == pytest.approx(peak_band(octave_down[None])[0], abs=1)


def test_time_interpolation_reads_the_requested_frames():
    x = tf.constant(np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5))
    src = tf.constant([[0.0, 0.5, 1.0, 4.0, 7.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    out = _interpolate(x, src, axis=2, fill=tf.constant(-1.0))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0, 4.0, -1.0])
    np.testing.assert_allclose(out[1, 2], [x[1, 2, 1]] * 5)


def test_augmentation_keeps_shape_and_finiteness_and_is_reproducible():
    aug = SpecAugmenter(CFG, strength=1.5)
    x = tf.constant(tone_batch([300.0, 900.0, 2500.0, 5000.0]))
    a = aug(x, tf.constant([7, 1], tf.int64))
    b = aug(x, tf.constant([7, 1], tf.int64))
    c = aug(x, tf.constant([7, 2], tf.int64))
    assert a.shape == x.shape and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, x)


def test_strength_zero_is_the_identity():
    x = tf.constant(tone_batch([440.0, 880.0]))
    np.testing.assert_array_equal(SpecAugmenter(CFG, strength=0)(x, tf.constant([0, 0], tf.int64)), x)


def test_mixup_blends_examples_and_labels_alike():
    x = tf.constant(np.stack([np.zeros((4, 6)), np.ones((4, 6))]).astype(np.float32))
    y = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    mx, my = mixup(x, y, tf.constant([3, 4], tf.int64), alpha=0.4)
    np.testing.assert_allclose(np.asarray(my).sum(axis=1), 1.0, atol=1e-6)
    # Each mixed example's level equals its label's weight on class 1, and stays dominated by itself.
    np.testing.assert_allclose(np.asarray(mx).mean(axis=(1, 2)), np.asarray(my)[:, 1], atol=1e-6)
    assert my[0, 0] >= 0.5 and my[1, 1] >= 0.5


def test_only_the_chosen_augmentations_run():
    """Gain alone moves every bin of a clip by one amount; nothing else changes its shape."""
    x = tf.constant(tone_batch([440.0, 880.0, 1760.0]))
    gained = np.asarray(SpecAugmenter(CFG, kinds=["gain"])(x, tf.constant([5, 5], tf.int64)))
    offsets = gained - np.asarray(x)
    np.testing.assert_allclose(offsets, offsets[:, :1, :1] * np.ones_like(offsets), atol=1e-4)
    assert np.abs(offsets[:, 0, 0]).max() > 0.1
    np.testing.assert_array_equal(SpecAugmenter(CFG, kinds=[])(x, tf.constant([5, 5], tf.int64)), x)
    with pytest.raises(ValueError, match="unknown augmentations"):
        SpecAugmenter(CFG, kinds=["reverb"])


def test_a_share_of_the_clips_is_augmented_and_the_rest_pass_as_they_are():
    x = tf.constant(tone_batch([300.0 + 20 * i for i in range(200)]))
    changed = lambda aug: np.abs(aug(x, tf.constant([3, 4])).numpy() - x.numpy()).max(axis=(1, 2)) > 1e-3  # noqa: E731
    assert changed(SpecAugmenter(CFG)).all()
    share = changed(SpecAugmenter(CFG, share=0.5)).mean()
    assert 0.35 < share < 0.65, share
    assert not changed(SpecAugmenter(CFG, share=0.0)).any()
    with pytest.raises(ValueError, match="between 0 and 1"):
        SpecAugmenter(CFG, share=1.5)
