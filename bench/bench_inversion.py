"""Benchmark: mel spectrogram -> audio, our batched torchaudio path vs librosa clip by clip.

    python bench/bench_inversion.py [--clips 10] [--iters 64] [--repeats 3]

Both invert the same log-mels of real-sounding clips at the cGAN's default
settings (22.05 kHz, 2 s, 128 mels) with the same number of Griffin-Lim
iterations (momentum 0.99 on both sides):

- librosa: feature.inverse.mel_to_audio per clip (NNLS mel inversion, then griffinlim);
- ours:    train_cgan.mel_to_audio on the whole batch (least-squares InverseMelScale, then GriffinLim).

Quality is the spectral convergence ||S - S'|| / ||S|| between the STFT
magnitudes of each original clip and its reconstruction (lower is better;
the mel resolution sets its floor).
"""
import tempfile
from pathlib import Path

import librosa
import numpy as np
import torch

from common import paired_seconds, parser, report, row, write_clips
import audio_data as ad
import train_cgan

GOAL = 5.0


def spectral_convergence(reference: np.ndarray, estimate: np.ndarray, cfg: ad.FeatureConfig) -> float:
    mag = lambda w: np.abs(librosa.stft(w, n_fft=cfg.n_fft, hop_length=cfg.hop_length))  # noqa: E731
    s, e = mag(reference), mag(ad.fix_length(estimate, len(reference)))
    return float(np.linalg.norm(s - e) / np.linalg.norm(s))


def librosa_per_clip(mels_db, cfg, iters):
    return [librosa.feature.inverse.mel_to_audio(librosa.db_to_power(m), sr=cfg.sr, n_fft=cfg.n_fft,
                                                 hop_length=cfg.hop_length, n_iter=iters, length=cfg.n_samples)
            for m in mels_db]


def ours_batched(mels_db, cfg, iters):
    return train_cgan.mel_to_audio(torch.from_numpy(mels_db), cfg, iters).numpy()


def main():
    p = parser(__doc__)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations, both sides (the cGAN's default)")
    args = p.parse_args()
    cfg = ad.FeatureConfig(sr=22050, duration=2.0, n_fft=1024, hop_length=256, n_mels=128)
    with tempfile.TemporaryDirectory() as tmp:
        waves = np.stack([ad.load_clip(path, cfg.sr, cfg.duration) for path in write_clips(Path(tmp), args.clips)])
    mels = np.stack([ad.log_mel(w, cfg) for w in waves])
    ours_batched(mels[:2], cfg, 2)  # warm-up
    librosa_per_clip(mels[:1], cfg, 2)
    lib_t, ours_t, speed_up, lib_waves, ours_waves = paired_seconds(librosa_per_clip, ours_batched, args.repeats,
                                                                    mels, cfg, args.iters)
    sc = {name: np.median([spectral_convergence(w, r, cfg) for w, r in zip(waves, rebuilt)])
          for name, rebuilt in (("ours", ours_waves), ("librosa", lib_waves))}
    report(args, [row("mel -> audio inversion", args.clips / ours_t, "clips/s", args.clips / lib_t, ratio=speed_up,
                      goal=f">= {GOAL:g}x", met=speed_up >= GOAL,
                      detail=f"{args.clips} clips, 22.05 kHz, 2 s, 128 mels, {args.iters} Griffin-Lim iterations; "
                             f"spectral convergence (median) ours {sc['ours']:.3f}, librosa {sc['librosa']:.3f}",
                      spectral_convergence_ours=sc["ours"], spectral_convergence_librosa=sc["librosa"])])


if __name__ == "__main__":
    main()
