"""Audio as log-mel frame sequences for the shared encoder.

Stored in shards as FLAC (lossless, 16-bit, mono) at the modality's `sample_rate`: datagen
reads anything soundfile reads (WAV, FLAC, OGG, ...) or takes arrays, mixes down to mono and
resamples with torchaudio. Data-loader workers decode the FLAC with soundfile. On the device,
the bottom computes log-mel features (torchaudio's MelSpectrogram), normalises each utterance
over its own frames (per mel bin, or as a whole), applies SpecAugment (FrequencyMasking,
TimeMasking) in training only, and subsamples time x4 with two strided convolutions to d_model.

Lengths are exact: the STFT does not pad at the ends (`center=False`), so a frame never
reads past its utterance, and padding frames are zeroed after every step, so an utterance
gets the same features alone or in a batch with longer ones.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2t.errors import UserError
from t2t.modality import Modality


def read_audio(raw: Any, default_rate: int) -> tuple[np.ndarray, int]:
    """(float32 mono waveform, sample rate) from a file path, encoded bytes, a
    `(waveform, rate)` pair, a `{"array", "sampling_rate"}` dict (Hugging Face datasets) or a
    bare waveform at `default_rate`. Arrays may be (N,) or 2-D with channels on the shorter
    axis; integer arrays are full-scale PCM."""
    import soundfile

    if isinstance(raw, dict) and "array" in raw:
        raw = (raw["array"], raw["sampling_rate"])
    if isinstance(raw, tuple):
        waveform, rate = raw
    elif isinstance(raw, np.ndarray | torch.Tensor):
        waveform, rate = raw, default_rate
    else:
        name = str(raw) if isinstance(raw, str | Path) else "audio bytes"
        source = io.BytesIO(raw) if isinstance(raw, bytes | bytearray) else Path(raw)
        if isinstance(source, Path) and not source.is_file():
            raise UserError(f"{name}: audio file not found")
        try:
            waveform, rate = soundfile.read(source, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
            raise UserError(f"{name}: not a readable audio file ({error})") from None
    waveform = np.asarray(waveform)
    if np.issubdtype(waveform.dtype, np.integer):
        waveform = waveform / float(np.iinfo(waveform.dtype).max)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=int(np.argmin(waveform.shape)))
    if waveform.ndim != 1:
        raise UserError(f"audio must be (samples,) or (samples, channels), got shape "
                        f"{waveform.shape}")
    return waveform.astype(np.float32), int(rate)


def _torchaudio():
    """torchaudio, or one clear line when it cannot load beside the installed torch (its
    releases are built for one torch; a mismatch fails at import)."""
    try:
        import torchaudio
        import torchaudio.functional
        import torchaudio.transforms
    except (ImportError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"torchaudio cannot be loaded with torch {torch.__version__} "
                        f"({reason}); install matching versions: "
                        f"pip install -e . -c constraints.txt") from None
    return torchaudio


def resample(waveform: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return waveform
    torchaudio = _torchaudio()
    return torchaudio.functional.resample(torch.from_numpy(waveform), rate, target_rate).numpy()


class AudioModality(Modality):
    """Speech and other audio (inputs only), as log-mel frames subsampled x4.

    window_ms/hop_ms: STFT window and hop; num_mels: mel bins; conv_channels: width of the
    two subsampling convolutions; freq_masks x freq_mask_width (mel bins) and time_masks x
    time_mask_width (frames): SpecAugment in training when spec_augment is True.
    normalize: "bin" scales each mel bin of an utterance to zero mean and unit variance over
    its frames (speech: every band carries formants); "utterance" does it with one mean and
    variance for all bins, which keeps the bins' loudness apart: a tone in one bin stands out
    instead of being scaled to the same variance as the noise in every other bin.
    A run's data.augment.audio settings (see `AudioAugmentation`) and model.bottoms.audio
    settings (`bottom`) add more of training's random changes.
    """

    kind = "audio"
    extension = "flac"
    file_suffixes = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")  # what soundfile reads

    def __init__(self, sample_rate: int = 16000, num_mels: int = 80, window_ms: float = 25.0,
                 hop_ms: float = 10.0, conv_channels: int = 32, spec_augment: bool = True,
                 freq_masks: int = 2, freq_mask_width: int = 15, time_masks: int = 2,
                 time_mask_width: int = 10, normalize: str = "bin"):
        self.sample_rate, self.num_mels, self.conv_channels = sample_rate, num_mels, conv_channels
        self.window = round(sample_rate * window_ms / 1000)  # samples
        self.hop = round(sample_rate * hop_ms / 1000)
        self.n_fft = 1 << (self.window - 1).bit_length()  # next power of two
        if self.hop < 1 or self.window < self.hop:
            raise UserError(f"AudioModality: window_ms={window_ms} and hop_ms={hop_ms} give a "
                            f"window of {self.window} and a hop of {self.hop} samples")
        if normalize not in NORMALIZE_OVER:
            raise UserError(f"AudioModality: normalize must be one of {sorted(NORMALIZE_OVER)}, "
                            f"got {normalize!r}")
        self.normalize = normalize
        self.spec_augment = dict(freq_masks=freq_masks, freq_mask_width=freq_mask_width,
                                 time_masks=time_masks, time_mask_width=time_mask_width
                                 ) if spec_augment else None

    @property
    def key(self) -> str:
        augment = ("sa{freq_masks}x{freq_mask_width}-{time_masks}x{time_mask_width}"
                   .format(**self.spec_augment) if self.spec_augment else "nosa")
        normalize = "" if self.normalize == "bin" else f":norm-{self.normalize}"
        return (f"audio:{self.sample_rate}hz:m{self.num_mels}:w{self.window}:h{self.hop}:"
                f"c{self.conv_channels}:{augment}{normalize}")

    def describe(self) -> str:
        return f"audio({self.sample_rate / 1000:g} kHz, {self.num_mels} mels)"

    # -- data ------------------------------------------------------------------------------

    def encode(self, raw: Any) -> bytes:
        import soundfile

        waveform, rate = read_audio(raw, self.sample_rate)
        waveform = resample(waveform, rate, self.sample_rate)
        out = io.BytesIO()
        soundfile.write(out, np.clip(waveform, -1.0, 1.0), self.sample_rate, format="FLAC",
                        subtype="PCM_16")
        return out.getvalue()

    def augmentation(self, *, speed_perturb: Sequence[float] = (),
                     noise_snr_db: Sequence[float] = ()) -> AudioAugmentation:
        return AudioAugmentation(speed_perturb, noise_snr_db)

    def load(self, data: bytes, augment: AudioAugmentation | None = None) -> torch.Tensor:
        """(N,) float32 waveform at sample_rate, in training changed by `augment`
        (SpecAugment happens on the device)."""
        import soundfile

        waveform, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        if augment is not None:
            rate = augment.played_rate(rate)
        waveform = torch.from_numpy(resample(waveform, rate, self.sample_rate))
        if augment is not None:
            waveform = augment.add_noise(waveform)
        return waveform

    def length(self, data: bytes) -> int:
        import soundfile

        info = soundfile.info(io.BytesIO(data))  # reads the header only
        samples = math.ceil(info.frames * self.sample_rate / info.samplerate)
        return int(subsampled(num_frames(torch.tensor(samples), self.n_fft, self.hop)))

    def collate(self, values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) waveforms zero-padded on the right (to at least one STFT window) and the
        (B, N) sample padding mask; the bottom turns it into a frame mask."""
        lengths = torch.tensor([len(v) for v in values])
        batch = torch.zeros(len(values), max(int(lengths.max()), self.n_fft))
        for i, waveform in enumerate(values):
            batch[i, : len(waveform)] = waveform
        return batch, torch.arange(batch.shape[1])[None, :] >= lengths[:, None]

    # -- model side ------------------------------------------------------------------------

    def bottom(self, d_model: int, *, freq_warp: float = 0.0) -> nn.Module:
        """Log-mel features, normalised per utterance, subsampled x4 by two convolutions.
        freq_warp: in training, each utterance's mel axis is stretched or squeezed by a
        factor drawn from [1 - freq_warp, 1 + freq_warp] (vocal tract length perturbation,
        Jaitly and Hinton 2013): other formant positions at the same speed, unlike
        speed_perturb."""
        if not 0.0 <= freq_warp < 0.5:
            raise UserError(f"model.bottoms.audio.freq_warp must be in [0, 0.5), got "
                            f"{freq_warp}")
        return AudioFeatures(self.sample_rate, self.n_fft, self.window, self.hop, self.num_mels,
                             self.conv_channels, d_model, self.spec_augment, float(freq_warp),
                             self.normalize)


class AudioAugmentation:
    """Random changes to a training utterance, before its features are computed.

    speed_perturb: factors (e.g. [0.9, 1.0, 1.1]) one of which, drawn per utterance, changes
    its speed and pitch together (Ko et al. 2015): new voices from few speakers. A factor's
    rate (sample_rate x factor) should share a large divisor with sample_rate, or resampling
    gets slow. Batches are planned on the stored lengths, so a slowed utterance can make a
    batch up to 1/min(factors) times its max_tokens.
    noise_snr_db: [low, high]: white noise is added to each utterance at a signal-to-noise
    ratio drawn from that range (dB, against the utterance's own RMS): other recording
    conditions, and silences that are never digitally silent.
    """

    def __init__(self, speed_perturb: Sequence[float] = (), noise_snr_db: Sequence[float] = ()):
        if any(not 0.5 <= factor <= 2.0 for factor in speed_perturb):
            raise UserError(f"data.augment.audio.speed_perturb factors must be between 0.5 "
                            f"and 2, got {list(speed_perturb)}")
        if noise_snr_db and (len(noise_snr_db) != 2 or noise_snr_db[0] > noise_snr_db[1]):
            raise UserError(f"data.augment.audio.noise_snr_db must be [low, high] in dB (or "
                            f"empty for no noise), got {list(noise_snr_db)}")
        self.speed_perturb = [float(factor) for factor in speed_perturb]
        self.noise_snr_db = [float(db) for db in noise_snr_db]

    def played_rate(self, rate: int) -> int:
        """The rate to read a recording at: faster (factor > 1) or slower, N / factor."""
        if not self.speed_perturb:
            return rate
        return round(rate * self.speed_perturb[int(torch.randint(len(self.speed_perturb), ()))])

    def add_noise(self, waveform: torch.Tensor) -> torch.Tensor:
        if not self.noise_snr_db:
            return waveform
        low, high = self.noise_snr_db
        snr_db = low + (high - low) * float(torch.rand(()))
        rms = waveform.square().mean().sqrt()
        return waveform + torch.randn_like(waveform) * rms * 10 ** (-snr_db / 20)


# The (B, M, F) feature axes a normalisation's mean and variance are taken over.
NORMALIZE_OVER = {"bin": (2,), "utterance": (1, 2)}


def num_frames(samples: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """STFT frames (center=False) that lie wholly inside `samples` samples."""
    return torch.where(samples >= n_fft, (samples - n_fft) // hop + 1, 0)


def subsampled(frames: torch.Tensor) -> torch.Tensor:
    """Frames after two convolutions with kernel 3, stride 2, padding 1: ceil(ceil(F/2)/2)."""
    return ((frames + 1) // 2 + 1) // 2


class AudioFeatures(nn.Module):
    """(B, N) waveforms + (B, N) sample padding -> (B, T, d_model) + (B, T) frame padding."""

    def __init__(self, sample_rate: int, n_fft: int, window: int, hop: int, num_mels: int,
                 channels: int, d_model: int, spec_augment: dict | None,
                 freq_warp: float = 0.0, normalize: str = "bin"):
        super().__init__()
        self.freq_warp, self.normalize_over = freq_warp, NORMALIZE_OVER[normalize]
        torchaudio = _torchaudio()
        self.n_fft, self.hop = n_fft, hop
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=n_fft, win_length=window, hop_length=hop, n_mels=num_mels,
            center=False)
        masks: list[nn.Module] = []
        if spec_augment:
            masks += [torchaudio.transforms.FrequencyMasking(spec_augment["freq_mask_width"],
                                                            iid_masks=True)
                      for _ in range(spec_augment["freq_masks"])]
            masks += [torchaudio.transforms.TimeMasking(spec_augment["time_mask_width"],
                                                       iid_masks=True)
                      for _ in range(spec_augment["time_masks"])]
        self.masks = nn.ModuleList(masks)
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.project = nn.Linear(channels * subsampled(torch.tensor(num_mels)).item(), d_model)
        # Unit scale per channel, like scaled token embeddings: the raw projection is ~0.1,
        # small beside the body's position signal (see modalities.image.ImagePatches).
        self.norm = nn.LayerNorm(d_model)

    def forward(self, waveforms: torch.Tensor, pad_mask: torch.Tensor):
        lengths = num_frames((~pad_mask).sum(dim=1), self.n_fft, self.hop)  # (B,)
        features = (self.mel(waveforms.float()) + 1e-6).log()  # (B, M, F)
        valid = _valid(lengths, features.shape[2])[:, None, :]  # (B, 1, F)
        # Per-utterance normalisation over the utterance's own frames only.
        dims = self.normalize_over
        count = valid.expand_as(features).sum(dim=dims, keepdim=True).clamp(min=1)
        mean = (features * valid).sum(dim=dims, keepdim=True) / count
        var = (((features - mean) * valid) ** 2).sum(dim=dims, keepdim=True) / count
        features = (features - mean) / (var.sqrt() + 1e-5) * valid
        if self.training and self.freq_warp:
            features = warp_frequencies(features, self.freq_warp) * valid
        if self.training and len(self.masks):
            x = features[:, None]  # (B, 1, M, F): iid masks need a channel axis
            for mask in self.masks:
                x = mask(x, mask_value=0.0)  # 0 is the utterance mean after normalising
            features = x[:, 0] * valid
        x = features.transpose(1, 2)[:, None]  # (B, 1, F, M): time, then frequency
        for conv in (self.conv1, self.conv2):
            x = torch.relu(conv(x))
            lengths = (lengths + 1) // 2
            x = x * _valid(lengths, x.shape[2])[:, None, :, None]
        x = self.norm(self.project(x.permute(0, 2, 1, 3).flatten(2)))  # (B, T, ch*M/4) -> C
        return x, ~_valid(lengths, x.shape[1])  # (B, T, C), (B, T) True = padding


def warp_frequencies(features: torch.Tensor, warp: float) -> torch.Tensor:
    """(B, M, F) features, each utterance's bin axis scaled by its own random factor in
    [1 - warp, 1 + warp] about bin 0: bin m reads bin m / factor (linear interpolation;
    beyond the top bin, the top bin)."""
    batch, bins, _ = features.shape
    factor = 1 + (torch.rand(batch, 1, device=features.device) * 2 - 1) * warp  # (B, 1)
    source = (torch.arange(bins, device=features.device)[None, :] / factor).clamp(max=bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=bins - 1)
    weight = (source - low)[:, :, None]  # (B, M, 1)

    def bins_at(index: torch.Tensor) -> torch.Tensor:
        return features.gather(1, index[:, :, None].expand(-1, -1, features.shape[2]))

    return bins_at(low) * (1 - weight) + bins_at(high) * weight


def _valid(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]  # (B, size)
