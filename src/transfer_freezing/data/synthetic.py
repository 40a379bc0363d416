"""Deterministic, learnable, GTZAN-shaped synthetic music corpus for the offline demo."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal
from torchaudio.datasets.gtzan import gtzan_genres
from tqdm import tqdm

GENRES: tuple[str, ...] = tuple(gtzan_genres)
MANIFEST_COLUMNS = ("clip_id", "genre", "file", "source", "status", "reason", "sample_rate",
                    "channels", "seconds")

T = TypeVar("T")
Range = tuple[float, float]
# A chord progression: (semitones above the clip's root, chord intervals) per bar.
Progression = tuple[tuple[int, tuple[int, ...]], ...]

_MAJ, _MIN, _DOM7 = (0, 4, 7), (0, 3, 7), (0, 4, 7, 10)
_MAJ7, _MIN7, _POWER = (0, 4, 7, 11), (0, 3, 7, 10), (0, 7, 12)
_TABLE_BITS = 12
_TABLE_SIZE = 2**_TABLE_BITS
_PEAK = 0.89
_BANDWIDTH_HZ = (4000.0, 10500.0)


@dataclass(frozen=True)
class Style:
    """Parameter ranges of one genre; every clip draws its own values from them.

    Patterns are 16 steps per bar: ``x`` accent, ``o`` soft hit, ``.`` rest.
    Levels are in dB relative to the synth voice.
    """

    tempo: Range
    swing: Range
    kick: tuple[str, ...]
    snare: tuple[str, ...]
    hat: tuple[str, ...]
    comp: tuple[str, ...]
    progressions: tuple[Progression, ...]
    root_midi: Range
    harmonics: tuple[int, int]
    rolloff: Range  # harmonic k has amplitude k**-rolloff: low = bright
    drive: Range  # tanh distortion amount on the voice; adds upper partials
    attack: Range  # seconds
    decay: Range  # seconds
    drums_db: Range
    hat_hz: Range
    bass_db: Range
    noise_db: Range
    noise_hz: Range  # low-pass cutoff of the background noise


_BLUES = ((0, _DOM7), (5, _DOM7), (0, _DOM7), (7, _DOM7))
_POP = ((0, _MAJ), (7, _MAJ), (9, _MIN), (5, _MAJ))
_THREE_CHORD = ((0, _MAJ), (5, _MAJ), (7, _MAJ), (0, _MAJ))
_MINOR = ((0, _MIN), (8, _MAJ), (10, _MAJ), (0, _MIN))
_MINOR7_VAMP = ((0, _MIN7), (5, _MIN7))
_JAZZ = ((2, _MIN7), (7, _DOM7), (0, _MAJ7), (9, _DOM7))
_POWER_MINOR = ((0, _POWER), (8, _POWER), (10, _POWER), (0, _POWER))
_POWER_ROCK = ((0, _POWER), (10, _POWER), (5, _POWER), (0, _POWER))

STYLES: dict[str, Style] = {
    "blues": Style(
        tempo=(70, 110), swing=(0.2, 0.33),
        kick=("x.......x.......", "x.....o.x......."), snare=("....x.......x...",),
        hat=("x.x.x.x.x.x.x.x.", "x..xx..xx..xx..x"), comp=("x..x..x.x..x..x.", "x...x...x...x..."),
        progressions=(_BLUES,), root_midi=(45, 57), harmonics=(6, 12), rolloff=(1.0, 1.6),
        drive=(0.0, 1.0), attack=(0.005, 0.03), decay=(0.3, 0.8),
        drums_db=(-14, -6), hat_hz=(5000, 8000), bass_db=(-10, -4), noise_db=(-36, -26),
        noise_hz=(3000, 7000)),
    "classical": Style(
        tempo=(60, 120), swing=(0.0, 0.05),
        kick=("................",), snare=("................",), hat=("................",),
        comp=("x.x.x.x.x.x.x.x.", "x...x...x...x...", "x..............."),
        progressions=(_THREE_CHORD, _MINOR), root_midi=(48, 67), harmonics=(3, 8),
        rolloff=(1.6, 2.6), drive=(0.0, 0.1), attack=(0.04, 0.2), decay=(0.6, 2.0),
        drums_db=(-60, -40), hat_hz=(6000, 9000), bass_db=(-14, -6), noise_db=(-50, -38),
        noise_hz=(2000, 6000)),
    "country": Style(
        tempo=(90, 140), swing=(0.0, 0.15),
        kick=("x.......x.......", "x...x...x...x..."), snare=("....x.......x...",),
        hat=("x.x.x.x.x.x.x.x.", "..x...x...x...x."), comp=("x.xxx.xxx.xxx.xx", "x...x.x.x...x.x."),
        progressions=(_THREE_CHORD, _POP), root_midi=(50, 62), harmonics=(6, 14),
        rolloff=(0.9, 1.5), drive=(0.0, 0.4), attack=(0.002, 0.01), decay=(0.2, 0.6),
        drums_db=(-14, -6), hat_hz=(5000, 8000), bass_db=(-10, -4), noise_db=(-44, -32),
        noise_hz=(3000, 7000)),
    "disco": Style(
        tempo=(112, 130), swing=(0.0, 0.05),
        kick=("x...x...x...x...",), snare=("....x.......x...",),
        hat=("..x...x...x...x.", "xxxxxxxxxxxxxxxx"), comp=("..x...x...x...x.", "x.x.x.x.x.x.x.x."),
        progressions=(_MINOR7_VAMP, _POP), root_midi=(48, 60), harmonics=(8, 16),
        rolloff=(0.8, 1.3), drive=(0.0, 0.3), attack=(0.002, 0.01), decay=(0.1, 0.35),
        drums_db=(-8, -2), hat_hz=(7000, 10000), bass_db=(-8, -2), noise_db=(-46, -34),
        noise_hz=(4000, 8000)),
    "hiphop": Style(
        tempo=(80, 100), swing=(0.1, 0.3),
        kick=("x.....x...x.....", "x..x......x..x.."), snare=("....x.......x...",),
        hat=("x.x.x.x.x.x.x.x.", "x.xxx.x.x.xxx.x."), comp=("x.......x.......", "x..............."),
        progressions=(_MINOR7_VAMP, _MINOR), root_midi=(40, 55), harmonics=(3, 8),
        rolloff=(1.3, 2.2), drive=(0.0, 0.3), attack=(0.005, 0.05), decay=(0.4, 1.2),
        drums_db=(-4, 2), hat_hz=(6000, 9000), bass_db=(-4, 2), noise_db=(-40, -28),
        noise_hz=(2000, 5000)),
    "jazz": Style(
        tempo=(100, 180), swing=(0.25, 0.33),
        kick=("x...............", "x.........o....."), snare=("......o.......o.", "..o.....o...o..."),
        hat=("x..xx..xx..xx..x", "x...x...x...x..."), comp=("x.....x...x.....", "..x..x....x..x.."),
        progressions=(_JAZZ,), root_midi=(48, 60), harmonics=(3, 9), rolloff=(1.3, 2.2),
        drive=(0.0, 0.2), attack=(0.005, 0.03), decay=(0.3, 0.9),
        drums_db=(-20, -10), hat_hz=(6000, 10000), bass_db=(-8, -2), noise_db=(-44, -32),
        noise_hz=(3000, 7000)),
    "metal": Style(
        tempo=(100, 180), swing=(0.0, 0.03),
        kick=("xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x."), snare=("....x.......x...", "..x...x...x...x."),
        hat=("x.x.x.x.x.x.x.x.",), comp=("xxxxxxxxxxxxxxxx", "x.x.x.x.x.x.x.x."),
        progressions=(_POWER_MINOR,), root_midi=(40, 52), harmonics=(8, 16), rolloff=(0.7, 1.2),
        drive=(2.0, 5.0), attack=(0.002, 0.008), decay=(0.15, 0.4),
        drums_db=(-8, -2), hat_hz=(5000, 8000), bass_db=(-8, -2), noise_db=(-36, -26),
        noise_hz=(5000, 9000)),
    "pop": Style(
        tempo=(95, 125), swing=(0.0, 0.1),
        kick=("x.......x.......", "x.....x.x......."), snare=("....x.......x...",),
        hat=("x.x.x.x.x.x.x.x.",), comp=("x...x...x...x...", "x..x..x...x..x.."),
        progressions=(_POP, _THREE_CHORD), root_midi=(52, 64), harmonics=(5, 12),
        rolloff=(1.0, 1.6), drive=(0.0, 0.4), attack=(0.005, 0.03), decay=(0.3, 0.8),
        drums_db=(-10, -4), hat_hz=(6000, 9000), bass_db=(-10, -4), noise_db=(-48, -36),
        noise_hz=(3000, 7000)),
    "reggae": Style(
        tempo=(65, 90), swing=(0.05, 0.2),
        kick=("........x.......", "x.......x......."), snare=("........x.......", "....x.......x..."),
        hat=("x.x.x.x.x.x.x.x.", "..x...x...x...x."), comp=("....x.......x...", "..x...x...x...x."),
        progressions=(_THREE_CHORD, _MINOR), root_midi=(50, 62), harmonics=(4, 10),
        rolloff=(1.1, 1.8), drive=(0.0, 0.3), attack=(0.002, 0.01), decay=(0.1, 0.3),
        drums_db=(-12, -4), hat_hz=(5000, 8000), bass_db=(-4, 2), noise_db=(-40, -30),
        noise_hz=(2000, 6000)),
    "rock": Style(
        tempo=(100, 150), swing=(0.0, 0.05),
        kick=("x.......x.x.....", "x...x...x...x..."), snare=("....x.......x...",),
        hat=("x.x.x.x.x.x.x.x.", "xxxxxxxxxxxxxxxx"), comp=("x.x.x.x.x.x.x.x.", "x...x...x...x..."),
        progressions=(_POWER_ROCK, _THREE_CHORD), root_midi=(45, 57), harmonics=(6, 14),
        rolloff=(0.9, 1.4), drive=(0.8, 2.5), attack=(0.002, 0.01), decay=(0.2, 0.6),
        drums_db=(-10, -4), hat_hz=(5000, 8000), bass_db=(-8, -2), noise_db=(-40, -30),
        noise_hz=(4000, 8000)),
}


def generate(out: Path, clips_per_class: int, clip_seconds: float, sample_rate: int = 22050,
             seed: int = 0) -> pd.DataFrame:
    """Write ``out/<genre>/<genre>.000NN.wav`` plus ``out/manifest.csv``; return the manifest."""
    n_samples = round(clip_seconds * sample_rate)
    if clips_per_class < 0 or n_samples < 1:
        raise ValueError(f"need clips_per_class >= 0 and clip_seconds > 0, got "
                         f"{clips_per_class} and {clip_seconds}")
    out = Path(out)
    for genre in GENRES:
        (out / genre).mkdir(parents=True, exist_ok=True)
    jobs = [(g, i) for g in range(len(GENRES)) for i in range(clips_per_class)]
    write = partial(_write_clip, out, n_samples, sample_rate, seed)
    # numpy, scipy and soundfile release the GIL in their heavy parts, so threads scale;
    # every clip has its own generator, so the order they run in does not matter.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rows = list(tqdm(pool.map(write, jobs), total=len(jobs),
                         desc="synthetic clips", unit="clip", disable=None))
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest.to_csv(out / "manifest.csv", index=False)
    return manifest


def _write_clip(out: Path, n_samples: int, sr: int, seed: int, job: tuple[int, int]) -> tuple:
    genre_idx, clip_idx = job
    genre = GENRES[genre_idx]
    rng = np.random.default_rng([seed, genre_idx, clip_idx])
    clip_id = f"{genre}.{clip_idx:05d}"
    rel = f"{genre}/{clip_id}.wav"
    sf.write(out / rel, render_clip(STYLES[genre], n_samples, sr, rng), sr, subtype="PCM_16")
    return clip_id, genre, rel, "synthetic", "ok", "", sr, 1, n_samples / sr


def render_clip(style: Style, n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``style`` as float32 in [-1, 1], peak-normalised."""
    step = 60.0 / rng.uniform(*style.tempo) / 4  # a 16th note, in seconds
    swing = rng.uniform(*style.swing)
    n_steps = int(n_samples / sr / step) + 2
    # Swing delays every off-beat 16th by a fraction of a step.
    onsets = (np.arange(n_steps) + swing * (np.arange(n_steps) % 2)) * step
    voice, bass = _harmony(style, onsets, n_samples, sr, rng)
    mix = (voice + _db(rng, style.bass_db) * bass
           + _db(rng, style.drums_db) * _drums(style, onsets, n_samples, sr, rng)
           + _db(rng, style.noise_db) * _noise(style, n_samples, sr, rng))
    mix = _recording(mix, sr, rng)
    return (_PEAK * mix / max(np.abs(mix).max(), 1e-9)).astype(np.float32)


def _recording(mix: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Genre-independent recording bandwidth, so brightness alone does not give the class away."""
    return signal.sosfilt(_biquad("lowpass", rng.uniform(*_BANDWIDTH_HZ), sr), mix)


def _db(rng: np.random.Generator, level: Range) -> float:
    return 10 ** (rng.uniform(*level) / 20)


def _pick(rng: np.random.Generator, options: tuple[T, ...]) -> T:
    return options[rng.integers(len(options))]


def _hits(pattern: str, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Per-step velocities of ``pattern`` tiled over ``n_steps``, humanised."""
    base = np.array([{"x": 1.0, "o": 0.5}.get(c, 0.0) for c in pattern])
    vel = np.resize(base, n_steps) * rng.uniform(0.75, 1.0, n_steps)
    ghost = (rng.random(n_steps) < 0.04) * rng.uniform(0.2, 0.5, n_steps)
    drop = rng.random(n_steps) < 0.05
    return np.where(drop, 0.0, np.maximum(vel, ghost))


def _place(template: np.ndarray, velocities: np.ndarray, onsets: np.ndarray, n_samples: int,
           sr: int) -> np.ndarray:
    """Sum of ``template`` copies at each onset, scaled by velocity."""
    out = np.zeros(n_samples + template.size)
    # A loop over the few hundred events is far cheaper here than an FFT convolution.
    for start, velocity in zip(np.round(onsets * sr).astype(int), velocities, strict=True):
        if velocity > 0 and start < n_samples:
            out[start:start + template.size] += velocity * template
    return out[:n_samples]


def _drums(style: Style, onsets: np.ndarray, n_samples: int, sr: int,
           rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.35 * sr)) / sr
    kick_hz = 45 + 80 * np.exp(-t / 0.03)  # the pitch drop makes the thump
    kick = np.sin(2 * np.pi * np.cumsum(kick_hz) / sr) * np.exp(-t / rng.uniform(0.08, 0.2))
    snare_band = _biquad("bandpass", 3000.0, sr, q=0.7)
    snare = (signal.sosfilt(snare_band, rng.standard_normal(t.size))
             + 0.5 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06)
    hat_band = np.tile(_biquad("highpass", rng.uniform(*style.hat_hz), sr), (2, 1))
    hat = signal.sosfilt(hat_band, rng.standard_normal(t.size)) * np.exp(-t / 0.015)
    # Templates end where they have decayed to under 1 %, which keeps placing them cheap.
    kit = ((kick, style.kick, 1.0), (snare[: int(0.28 * sr)], style.snare, 0.6),
           (hat[: int(0.07 * sr)], style.hat, 0.5))
    return sum(gain * _place(sound, _hits(_pick(rng, patterns), onsets.size, rng), onsets,
                             n_samples, sr)
               for sound, patterns, gain in kit)


def _wavetable(harmonics: int, rolloff: float) -> np.ndarray:
    """One period of a harmonic tone whose partials fall off as k**-rolloff."""
    k = np.arange(1, harmonics + 1)
    x = np.arange(_TABLE_SIZE) / _TABLE_SIZE
    # An explicit sum, not a BLAS product, keeps the table bit-identical on every machine.
    partials = (k ** -rolloff)[:, None] * np.sin(2 * np.pi * np.outer(k, x))
    return partials.sum(axis=0).astype(np.float32)


_BASS_TABLE = _wavetable(3, 2.0)

def _harmony(style: Style, onsets: np.ndarray, n_samples: int, sr: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Chord voice struck on the comp pattern, and a bass on every half bar."""
    root = int(rng.integers(*style.root_midi, endpoint=True))
    progression = _pick(rng, style.progressions)
    bar_starts = np.round(onsets[::16] * sr).astype(int)
    bar_lengths = np.diff(np.minimum(np.append(bar_starts, n_samples), n_samples))
    bar_chords = [progression[b % len(progression)] for b in range(bar_starts.size)]
    width = max(len(chord) for _, chord in progression)
    # Per bar and note: MIDI pitch; missing notes of smaller chords get 0 Hz, i.e. silence.
    notes = np.array([[root + shift + c for c in chord] + [None] * (width - len(chord))
                      for shift, chord in bar_chords], dtype=float)
    voice_table = _wavetable(int(rng.integers(*style.harmonics, endpoint=True)),
                             rng.uniform(*style.rolloff))
    voice = _tones(voice_table, notes, bar_lengths, sr)
    voice *= _envelope(_hits(_pick(rng, style.comp), onsets.size, rng), onsets, n_samples, sr,
                       rng.uniform(*style.attack), rng.uniform(*style.decay))
    drive = rng.uniform(*style.drive)
    if drive > 0.05:
        voice = np.tanh(drive * voice / max(np.abs(voice).max(), 1e-9)) / np.tanh(drive)
    bass = _tones(_BASS_TABLE, notes[:, :1] - 24, bar_lengths, sr)
    bass_hits = np.where(np.arange(onsets.size) % 8 == 0, 1.0, 0.0)
    bass *= _envelope(bass_hits, onsets, n_samples, sr, 0.005, 0.5)
    return voice, bass


def _tones(table: np.ndarray, midi: np.ndarray, bar_lengths: np.ndarray, sr: int) -> np.ndarray:
    """Phase-continuous wavetable oscillators playing ``midi[bar, voice]`` (NaN: silent)."""
    hz = np.nan_to_num(440.0 * 2 ** ((midi - 69) / 12))
    # 32-bit fixed-point phase: the cumulative sum wraps around exactly once per period.
    increments = np.round(hz.T / sr * 2**32).astype(np.uint32)  # (voice, bar): rows contiguous
    phase = np.cumsum(np.repeat(increments, bar_lengths, axis=1), axis=1, dtype=np.uint32)
    return table.take(phase >> np.uint32(32 - _TABLE_BITS)).sum(axis=0) / midi.shape[1]


def _envelope(velocities: np.ndarray, onsets: np.ndarray, n_samples: int, sr: int,
              attack: float, decay: float) -> np.ndarray:
    """Attack/decay envelope re-struck at each hit: impulses through two one-pole filters."""
    impulses = np.zeros(n_samples, dtype=np.float32)
    idx = np.round(onsets * sr).astype(int)
    keep = idx < n_samples
    impulses[idx[keep]] = velocities[keep]
    d, a = np.exp(-1 / (decay * sr)), np.exp(-1 / (attack * sr))
    return signal.lfilter([1.0 - a], np.convolve([1.0, -d], [1.0, -a]), impulses)


def _noise(style: Style, n_samples: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    sos = _biquad("lowpass", rng.uniform(*style.noise_hz), sr)
    return signal.sosfilt(sos, rng.standard_normal(n_samples, dtype=np.float32))


def _biquad(kind: str, hz: float, sr: int, q: float = 0.7071) -> np.ndarray:
    """One second-order section (RBJ cookbook): far cheaper to design than ``signal.butter``."""
    w = 2 * np.pi * min(hz, 0.45 * sr) / sr  # keep below Nyquist so any sample rate works
    cos, alpha = np.cos(w), np.sin(w) / (2 * q)
    b = {"lowpass": [(1 - cos) / 2, 1 - cos, (1 - cos) / 2],
         "highpass": [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2],
         "bandpass": [alpha, 0.0, -alpha]}[kind]
    a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array([b + a]) / a[0]
