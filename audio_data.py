"""Audio discovery, robust decoding and cached log-mel features.

Shared by train_classifier.py (Keras) and train_cgan.py (PyTorch), so it imports
neither framework. Everything here is built for real, messy folders of clips:
mixed sample rates, bit depths and channel counts, stray hidden files, and the
odd empty, truncated or corrupt file among thousands. A bad file costs one
warning line naming it, never the run.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from joblib import Parallel, delayed
from tqdm import tqdm

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif"})
# Below this peak level (-80 dBFS, about 3 LSB of 16-bit audio) a clip carries
# nothing but dither; training on it only teaches the model that silence is a class.
SILENCE_PEAK = 1e-4
# Floor of the log-mel features, in dB: keeps log() finite on digital silence.
DB_FLOOR = -100.0
# Below this many clips per worker process, starting the processes costs more than they save:
# about a second (fresh processes importing librosa), against 2-8 ms a clip.
MIN_CLIPS_PER_WORKER = 250
# The scripts' --workers, which extract_features(workers=None) decides by default.
WORKERS_HELP = f"processes decoding audio (default: one per core, at most one per {MIN_CLIPS_PER_WORKER} clips)"


class DataError(Exception):
    """The data cannot be used at all; the message says why, for the user."""


class BadAudio(Exception):
    """One file cannot be used; the message is the reason shown to the user."""


MEL_SCALES = ("slaney", "htk")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that decides the features; saved beside every model."""

    sr: int = 22050
    duration: float = 4.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: str = "slaney"  # or "htk"; models saved before this field are Slaney

    def __post_init__(self):
        # librosa and torchaudio read any other name as Slaney's: a typo would go unnoticed.
        if self.mel_scale not in MEL_SCALES:
            raise ValueError(f"mel_scale must be one of {', '.join(MEL_SCALES)}, not {self.mel_scale!r}")

    @property
    def n_samples(self) -> int:
        return int(round(self.sr * self.duration))

    @property
    def n_frames(self) -> int:
        # librosa's centred STFT gives one frame per hop plus one.
        return 1 + self.n_samples // self.hop_length

    def band_centres(self) -> np.ndarray:
        """Centre frequency (Hz) of every mel band of log_mel's filterbank."""
        return librosa.mel_frequencies(n_mels=self.n_mels + 2, fmin=self.fmin, fmax=self.fmax or self.sr / 2,
                                       htk=self.mel_scale == "htk")[1:-1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def run_script(job, args, interrupted_hint: str) -> int:
    """Run a script's job under the exit-status contract both scripts share.

    0 when done; 1 with a one-line `error: ...` when the data cannot be used (never
    a traceback: the message says what to fix); 130 on Ctrl-C, with how to go on.
    """
    try:
        job(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted_hint}", file=sys.stderr)
        return 130
    return 0


# What native libraries (TensorFlow's C++ core, through absl) print at INFO level, and absl's
# note that it does so before being initialised. TF_CPP_MIN_LOG_LEVEL no longer hides them.
_NATIVE_INFO_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ )")


@contextlib.contextmanager
def native_info_logs_hidden():
    """Run a block (an import) with native libraries' INFO log lines kept off stderr.

    Everything else the block writes to stderr, warnings and errors of any library,
    is shown as usual once it ends. TF_CPP_MIN_LOG_LEVEL=0 shows everything.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not _NATIVE_INFO_LOG.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def warn(message: str) -> None:
    """One line on stderr that does not tear an active progress bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------

def _is_hidden(path: Path, root: Path) -> bool:
    """Hidden files and folders (`._x.wav`, `.DS_Store`, `.git`) and macOS zip debris."""
    return any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def find_audio_files(root: str | Path) -> list[Path]:
    """All audio files below `root`, in a stable (sorted) order; hidden and other files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not _is_hidden(p, root)
    )


def _unwrap_nested_root(root: Path) -> Path:
    """Kaggle zips often unpack to `train/train/<class>/`: step into the inner folder."""
    children = [c for c in root.iterdir() if not _is_hidden(c, root)]
    if len(children) == 1 and children[0].is_dir() and children[0].name == root.name:
        return children[0]
    return root


def find_labelled_clips(root: str | Path) -> tuple[list[Path], list[str]]:
    """Clips in a folder-per-class tree, `root/<class>/**/*.wav`.

    Returns the clip paths and their class names (the name of the top-level folder
    each clip sits under). Audio lying directly in `root` has no class and is
    reported, not used.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"training folder {root} does not exist")
    root = _unwrap_nested_root(root)
    paths, labels, loose = [], [], 0
    for path in find_audio_files(root):
        rel = path.relative_to(root)
        if len(rel.parts) == 1:
            loose += 1
            continue
        paths.append(path)
        labels.append(rel.parts[0])
    if loose:
        warn(f"{loose} audio file(s) directly in {root} have no class folder and are ignored "
             f"(expected {root}/<class>/<clip>.wav)")
    if not paths:
        raise DataError(f"no audio files found in class folders under {root} "
                        f"(expected {root}/<class>/<clip>.wav)")
    return paths, labels


def keep_usable_classes(paths, labels, ok, min_classes: int = 2):
    """Drop the unusable clips, then any class left with none; stop if too few classes remain.

    Returns (paths, labels, class_names, row_indices) where row_indices index the
    feature array the `ok` mask came from.
    """
    rows = [i for i, good in enumerate(ok) if good]
    present = {labels[i] for i in rows}
    for name in sorted(set(labels) - present):
        warn(f"class '{name}' has no usable clips and is dropped")
    classes = sorted(present)
    if len(classes) < min_classes:
        raise DataError(f"need at least {min_classes} classes with usable clips, found "
                        f"{len(classes)}{': ' + ', '.join(classes) if classes else ''}")
    return [paths[i] for i in rows], [labels[i] for i in rows], classes, np.asarray(rows)


# ----------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------

def load_clip(path: str | Path, sr: int, duration: float) -> np.ndarray:
    """Decode the first `duration` seconds of a file to mono float32 at `sr`, padded or cropped.

    Only the frames needed are read, so a ten-minute recording costs no more than
    a short clip. Raises BadAudio with a short reason for any file that cannot
    be used.
    """
    path = Path(path)
    n_out = int(round(sr * duration))
    try:
        if path.stat().st_size == 0:
            raise BadAudio("empty file (0 bytes)")
        with sf.SoundFile(path) as f:
            native_sr = f.samplerate
            if native_sr <= 0:
                raise BadAudio(f"invalid sample rate {native_sr}")
            if f.frames <= 0:
                raise BadAudio("no audio frames (header only, or an empty data chunk)")
            want = min(f.frames, math.ceil(duration * native_sr))
            data = f.read(want, dtype="float32", always_2d=True)
            _check_not_truncated(f, want, len(data))
    except BadAudio:
        raise
    except Exception as e:  # libsndfile, OS and format errors alike: one reason line per file
        raise BadAudio(f"unreadable ({short_reason(e)})") from None
    if not np.isfinite(data).all():
        raise BadAudio("contains NaN or infinite samples")
    wave = data.mean(axis=1)
    peak = float(np.abs(wave).max())
    if peak < SILENCE_PEAK:
        raise BadAudio(f"silent (peak {20 * math.log10(peak):.0f} dBFS)" if peak > 0 else "silent (all samples zero)")
    if native_sr != sr:
        wave = librosa.resample(wave, orig_sr=native_sr, target_sr=sr)
    return fix_length(wave.astype(np.float32, copy=False), n_out)


# libsndfile logs "data : 88200 (should be 44078)" when a WAV's data chunk is shorter
# than its header says, then quietly reads what is there.
_SHORT_DATA_CHUNK = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
# Writers that stream to disk put a placeholder size in the header: not a truncation.
_STREAMING_PLACEHOLDERS = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def _check_not_truncated(f: sf.SoundFile, wanted: int, got: int) -> None:
    """A file that holds less audio than its header promises was cut off mid-write or mid-copy."""
    m = _SHORT_DATA_CHUNK.search(f.extra_info)
    cut = m and int(m[1]) not in _STREAMING_PLACEHOLDERS and int(m[1]) > int(m[2])
    if cut or got < wanted:
        raise BadAudio("truncated (the header promises more audio than the file holds)")


def short_reason(e: Exception) -> str:
    """One line of an exception's message, fit for a warning or an error line."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    # libsndfile prefixes its messages with the path we already print.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def fix_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or crop the end, to exactly n samples."""
    if len(wave) >= n:
        return wave[:n]
    return np.pad(wave, (0, n - len(wave)))


# ----------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------

def log_mel(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-power mel spectrogram in dB, shape (n_mels, n_frames), float32.

    Slaney normalisation (librosa's default) on cfg.mel_scale's bands, so torchaudio's
    InverseMelScale(norm="slaney", mel_scale=cfg.mel_scale) inverts it exactly.
    """
    power = np.abs(librosa.stft(y=wave, n_fft=cfg.n_fft, hop_length=cfg.hop_length)) ** 2
    mel = mel_filterbank(cfg) @ power
    db = 10.0 * np.log10(np.maximum(mel, 10 ** (DB_FLOOR / 10)))
    # Clipped after the log too: log10 of the floor's power is not exactly DB_FLOOR / 10
    # in float32 on every CPU (AVX-512 kernels land one ulp below it).
    return np.maximum(db, DB_FLOOR).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """librosa's mel filterbank, built once per config instead of once per clip."""
    return librosa.filters.mel(sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
                               htk=cfg.mel_scale == "htk")


def _features_or_reason(args) -> tuple[np.ndarray | None, str | None]:
    path, cfg = args
    try:
        return log_mel(load_clip(path, cfg.sr, cfg.duration), cfg), None
    except BadAudio as e:
        return None, str(e)
    except Exception as e:  # a decoder bug on one odd file must not end a long run
        return None, f"could not be processed ({type(e).__name__}: {short_reason(e)})"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cache_key(paths: list[Path], cfg: FeatureConfig) -> str:
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        # abspath, not resolve(): no system call per path component, and it made up
        # most of a cached run's time. A link reached two ways is cached twice: harmless.
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Features:
    """Log-mels of a list of files: `x[i]` belongs to `paths[i]`; rows of skipped files are zeros."""

    x: np.ndarray               # (N, n_mels, n_frames) float32, memory-mapped from the cache
    paths: list[Path]
    skipped: dict[int, str]     # row -> reason the file was skipped
    from_cache: bool

    @property
    def ok(self) -> np.ndarray:
        mask = np.ones(len(self.paths), dtype=bool)
        mask[list(self.skipped)] = False
        return mask


def extract_features(paths: list[Path], cfg: FeatureConfig, cache_dir: str | Path | None,
                     desc: str = "features", workers: int | None = None) -> Features:
    """Log-mel features of every file, decoded in parallel and cached on disk.

    The cache is keyed by the config and each file's path, size and modification
    time, so a second run with the same data and settings skips decoding
    entirely; change anything and the features are recomputed. Rows are streamed
    to the cache's .npy file as workers finish and read back memory-mapped, so
    memory stays flat however many clips there are. Every skipped file is
    reported (on a cached run too).
    """
    paths = [Path(p) for p in paths]
    shape = (len(paths), cfg.n_mels, cfg.n_frames)
    # Named by content alone, not by `desc`: one script's cache serves another that reads
    # the same files with the same settings (evaluate_generated.py's real clips, say).
    cache = Path(cache_dir) / f"features-{_cache_key(paths, cfg)}" if cache_dir else None
    if cache is not None and (cache / "status.json").exists():
        skipped = {int(k): v for k, v in json.loads((cache / "status.json").read_text())["skipped"].items()}
        feats = Features(np.load(cache / "features.npy", mmap_mode="r"), paths, skipped, True)
        print(f"{desc}: {len(paths)} clips from cache {cache}")
        for i, reason in sorted(skipped.items()):
            warn(f"skipped {paths[i]}: {reason}")
    else:
        feats = _compute_features(paths, cfg, shape, cache, desc, workers)
    report_skipped(feats.paths, feats.skipped, desc)
    return feats


def parallel_map(fn, items, workers: int):
    """fn over items, lazily and in order; in `workers` fresh processes (joblib's loky) when more than one.

    Fresh, not forked from the caller: a caller that has run TensorFlow or torch
    holds locks of their threads, and a child forked from it can die on one (seen
    after training, as the test clips' features began: "Check w->waitp->cond ==
    nullptr failed", then BrokenProcessPool). Loky does not re-run the calling script
    in them, gives each a fair share of the cores' BLAS threads (one each on 2 cores
    with 2 workers: more spun against each other and made 2 workers 3-7x slower
    than one), and keeps them for the next call of the run.
    """
    if workers <= 1:
        return map(fn, items)
    return Parallel(n_jobs=workers, batch_size=8, return_as="generator")(delayed(fn)(item) for item in items)


def _compute_features(paths, cfg, shape, cache, desc, workers) -> Features:
    skipped: dict[int, str] = {}
    jobs = [(p, cfg) for p in paths]
    if workers is None:
        workers = min(default_workers(), max(1, len(paths) // MIN_CLIPS_PER_WORKER))
    bar = tqdm(total=len(paths), desc=desc, unit="clip", dynamic_ncols=True, disable=None)  # none in logs
    work = None
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=temporary_prefix("features"), dir=cache.parent))
    try:
        rows = _collect(parallel_map(_features_or_reason, jobs, workers), skipped, paths, bar)
        if cache:
            _write_npy(work / "features.npy", shape, rows)
        else:
            x = _stack(shape, rows)
    except BaseException:
        if work:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        bar.close()
    if cache:
        (work / "status.json").write_text(json.dumps(
            {"config": cfg.to_dict(), "files": [str(p) for p in paths], "skipped": skipped}))
        try:
            work.rename(cache)  # atomic: a half-written cache is never picked up
        except OSError:  # another run finished the same cache first
            shutil.rmtree(work, ignore_errors=True)
        x = np.load(cache / "features.npy", mmap_mode="r")
    return Features(x, paths, skipped, False)


def _collect(results, skipped, paths, bar):
    """Each clip's features in order (None for a skipped file), as workers finish them."""
    for i, (feat, reason) in enumerate(results):
        if feat is None:
            skipped[i] = reason
            warn(f"skipped {paths[i]}: {reason}")
        bar.update()
        yield feat


def _write_npy(path: Path, shape, rows) -> None:
    """Stream rows into an .npy file with plain writes, one clip at a time.

    Rows written through a memory map stay mapped and count towards the
    process's memory until the end; written to the file, they are the page
    cache's to keep or drop, so memory stays flat however many clips there are.
    """
    zeros = np.zeros(shape[1:], np.float32)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for row in rows:
            f.write((zeros if row is None else row.astype("<f4", copy=False)).tobytes())


def _stack(shape, rows) -> np.ndarray:
    x = np.zeros(shape, np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            x[i] = row
    return x


def report_skipped(paths: list[Path], skipped: dict[int, str], desc: str) -> None:
    """One summary line of what was skipped and why, after the per-file warnings."""
    if not skipped:
        return
    kinds = Counter(reason.split(" (")[0] for reason in skipped.values())
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    print(f"{desc}: skipped {len(skipped)} of {len(paths)} files ({summary})", file=sys.stderr)


# ----------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------

_UMASK = os.umask(0)
os.umask(_UMASK)


# Temporary outputs are named `.<name>.<pid>.part-XXXXXXXX<suffix>`: the process id says
# whether the run that made one is still going, so a later run can remove what a killed
# one (SIGKILL, power loss) left behind, and never touches a running one's files.
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.part-[a-z0-9_]{8}(\.\w+)?$")


def temporary_prefix(name: str) -> str:
    """mkstemp/mkdtemp prefix for a temporary stand-in of `name` (see remove_stale_temporaries)."""
    return f".{name}.{os.getpid()}.part-"


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(*folders: str | Path) -> int:
    """Remove the temporary files and folders that runs no longer alive left in `folders`.

    Only names of our own pattern (temporary_prefix) whose process has ended are
    removed; other files, and a running process's temporaries, are left alone.
    Returns how many were removed.
    """
    removed = 0
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = _TEMPORARY.match(entry.name)
            if not m or int(m[1]) == os.getpid() or _process_alive(int(m[1])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    So a crash, a full disk or Ctrl-C never leaves a half-written file where the
    user expects a good one, nor destroys the previous version. The temporary
    name keeps the suffix, for libraries that pick the format from it. What a
    killed process leaves is removed by the next run (remove_stale_temporaries).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.stem), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs should not be
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
