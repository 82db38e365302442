"""Batched audio front ends in torch: sinc resampling, (log-)mel spectrograms, Kaldi filterbanks, windowing,
SpecAugment masking.

They run on the model's device inside the forward pass, in float32 with autocast off. The settings of each
front end are a :class:`FeatureSpec` (plain JSON), filled from a transformers feature extractor's config when
weights are loaded, so features match what the pretrained model saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.audio_utils import mel_filter_bank


def resample(x: Tensor, rate_in: int, rate_out: int, zeros: int = 6, rolloff: float = 0.99) -> Tensor:
    """Band-limited (Hann-windowed sinc) resampling of [..., N] by the rational factor rate_out / rate_in."""
    if rate_in == rate_out:
        return x
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    kernel, width = _sinc_kernel(down, up, zeros, rolloff, x.device, x.dtype)
    shape = x.shape
    n = shape[-1]
    y = F.conv1d(F.pad(x.reshape(-1, 1, n), (width, width + down)), kernel, stride=down)  # [M, up, L]
    y = y.transpose(1, 2).reshape(*shape[:-1], -1)
    return y[..., : math.ceil(up * n / down)]


def _sinc_kernel(
    down: int, up: int, zeros: int, rolloff: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, int]:
    cutoff = min(down, up) * rolloff
    width = math.ceil(zeros * down / cutoff)
    idx = torch.arange(-width, width + down, dtype=torch.float64, device=device)[None, :] / down
    t = (-torch.arange(up, dtype=torch.float64, device=device)[:, None] / up + idx) * cutoff
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * cutoff / down
    return kernel.to(dtype)[:, None, :], width


def resample_mask(mask: Tensor, length: int) -> Tensor:
    """Nearest-neighbour resampling of a [B, N] bool mask to [B, length]."""
    n = mask.shape[-1]
    if n == length:
        return mask
    idx = (torch.arange(length, device=mask.device) * n // max(length, 1)).clamp(max=n - 1)
    return mask[..., idx]


def frames_mask(sample_mask: Tensor, num_frames: int, frame_rate: float, sample_rate: int) -> Tensor:
    """[B, F] bool: frame f (spanning [f, f+1) / frame_rate seconds) is at least half real audio."""
    b, n = sample_mask.shape
    edges = torch.arange(num_frames + 1, dtype=torch.float64, device=sample_mask.device) * (
        sample_rate / frame_rate
    )
    edges = edges.round().long().clamp(max=n)
    csum = torch.cat([sample_mask.new_zeros(b, 1, dtype=torch.long), sample_mask.long().cumsum(-1)], dim=-1)
    real = csum[:, edges[1:]] - csum[:, edges[:-1]]
    span = (edges[1:] - edges[:-1]).clamp(min=1)
    full_span = max(round(sample_rate / frame_rate), 1)
    # A frame cut short by the end of the input counts against its nominal span.
    return real * 2 >= torch.maximum(span, torch.full_like(span, full_span))


@dataclass
class FeatureSpec:
    """Settings of a (log-)mel front end; JSON-serialisable so a checkpoint can rebuild it."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    win_length: int | None = None
    f_min: float = 0.0
    f_max: float | None = None
    mel_scale: str = "htk"
    """'htk', 'slaney' or 'kaldi' (triangles in mel space, as Kaldi/torchaudio do)."""
    mel_norm: str | None = None
    window: str = "hann"
    """'hann' (periodic), 'hann_symmetric' or 'povey'."""
    kaldi: bool = False
    """Kaldi framing (snip edges, DC removal, pre-emphasis) instead of a centred STFT."""
    preemphasis: float = 0.97
    log: str = "ln"
    """'ln', 'log10' or 'db' of the mel power, after clamping at `floor`."""
    floor: float = 1e-10
    drop_last_frame: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogMel(nn.Module):
    """[B, N] waveform -> [B, T, n_mels] log-mel features, following a :class:`FeatureSpec`."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec
        win = spec.win_length or spec.n_fft
        if spec.window == "hann":
            window = torch.hann_window(win, periodic=True, dtype=torch.float64)
        elif spec.window == "hann_symmetric":
            window = torch.hann_window(win, periodic=False, dtype=torch.float64)
        elif spec.window == "povey":
            window = torch.hann_window(win, periodic=False, dtype=torch.float64) ** 0.85
        else:
            raise ValueError(f"unknown window {spec.window!r} (expected hann, hann_symmetric or povey)")
        fb = mel_filter_bank(
            num_frequency_bins=spec.n_fft // 2 + 1,
            num_mel_filters=spec.n_mels,
            min_frequency=spec.f_min,
            max_frequency=spec.f_max if spec.f_max is not None else spec.sample_rate / 2,
            sampling_rate=spec.sample_rate,
            norm=spec.mel_norm,
            mel_scale=spec.mel_scale,
            triangularize_in_mel_space=spec.mel_scale == "kaldi",
        )
        # Derived from the spec, so not saved in state dicts.
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(np.asarray(fb, dtype=np.float32)), persistent=False)
        self.augment: SpecAugment | None = None
        """Masking applied to the features in training mode only (data.spec_augment); None: off."""

    @property
    def hop_seconds(self) -> float:
        return self.spec.hop_length / self.spec.sample_rate

    def num_frames(self, num_samples: int) -> int:
        s = self.spec
        if s.kaldi:
            return max(0, 1 + (num_samples - (s.win_length or s.n_fft)) // s.hop_length)
        return 1 + num_samples // s.hop_length - int(s.drop_last_frame)

    def forward(self, x: Tensor) -> Tensor:
        # Features in float32 even inside a mixed-precision forward (and with buffers cast to bf16 by DeepSpeed);
        # the consumer casts them to its own weights' dtype.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = self._log_mel(x.float())
            if self.augment is not None and self.training:
                features = self.augment(features, 1.0 / self.hop_seconds)
            return features

    def _log_mel(self, x: Tensor) -> Tensor:
        s = self.spec
        if s.kaldi:
            power = self._kaldi_power(x)
        else:
            stft = torch.stft(
                x,
                s.n_fft,
                s.hop_length,
                win_length=s.win_length or s.n_fft,
                window=self.window.float(),
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = stft.abs().pow(2).transpose(1, 2)  # [B, T, n_freq]
            if s.drop_last_frame:
                power = power[:, :-1]
        mel = (power @ self.mel_fb.float()).clamp(min=s.floor)
        if s.log == "ln":
            return mel.log()
        if s.log == "log10":
            return mel.log10()
        if s.log == "db":
            return 10.0 * mel.log10()
        raise ValueError(f"unknown log {s.log!r} (expected ln, log10 or db)")

    def _kaldi_power(self, x: Tensor) -> Tensor:
        s = self.spec
        win = s.win_length or s.n_fft
        if x.shape[-1] < win:
            x = F.pad(x, (0, win - x.shape[-1]))
        frames = x.unfold(-1, win, s.hop_length)  # [B, T, win]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        if s.preemphasis:
            frames = torch.cat(
                [frames[..., :1] * (1 - s.preemphasis), frames[..., 1:] - s.preemphasis * frames[..., :-1]],
                dim=-1,
            )
        frames = frames * self.window.float()
        return torch.fft.rfft(frames, n=s.n_fft).abs().pow(2)


def stripe_mask(size: int, starts: Tensor, widths: Tensor) -> Tensor:
    """[B, size] bool: position p is covered by a stripe [starts[b, k], starts[b, k] + widths[b, k]) of row b."""
    pos = torch.arange(size, device=starts.device)[None, None, :]
    return ((pos >= starts[..., None]) & (pos < (starts + widths)[..., None])).any(dim=1)


def draw_stripes(
    batch: int, count: int, max_width: int, size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(starts, widths) [batch, count] of random stripes: width uniform in {0..max_width-1} (at most `size`), start
    uniform over the positions where it fits (torch's global RNG, so a resumed run draws the same)."""
    widths = (torch.rand(batch, count, device=device) * max_width).long().clamp(max=size)
    starts = (torch.rand(batch, count, device=device) * (size - widths + 1)).long().clamp(max=size - widths)
    return starts, widths


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) on [B, T, M] features: per clip, independent time and frequency stripes are set
    to the clip's mean feature value (≈ 0 once a backend normalises its features; LAION-CLAP's HTSAT masks with 0 after
    its BatchNorm).

    Stripes are drawn as torchlibrosa's DropStripes draws them (LAION-CLAP's HTSAT: 2 time stripes < 64 frames of
    10 ms, 2 frequency stripes < 8 of 64 bins): width uniform below the maximum, then a start where it fits (here any
    such start; torchlibrosa's never reaches the last position).
    """

    def __init__(self, time_masks: int, time_width: float, freq_masks: int, freq_width: int):
        super().__init__()
        self.time_masks, self.time_width = time_masks, time_width
        self.freq_masks, self.freq_width = freq_masks, freq_width

    def forward(self, features: Tensor, frame_rate: float) -> Tensor:
        b, t, m = features.shape
        masked = torch.zeros(b, t, m, dtype=torch.bool, device=features.device)
        time_width = round(self.time_width * frame_rate)
        if self.time_masks and time_width > 0:
            starts, widths = draw_stripes(b, self.time_masks, time_width, t, features.device)
            masked |= stripe_mask(t, starts, widths)[:, :, None]
        if self.freq_masks and self.freq_width > 0:
            starts, widths = draw_stripes(b, self.freq_masks, self.freq_width, m, features.device)
            masked |= stripe_mask(m, starts, widths)[:, None, :]
        return torch.where(masked, features.mean(dim=(1, 2), keepdim=True), features)


def split_windows(x: Tensor, size: int, hop: int) -> tuple[Tensor, int]:
    """[B, T, ...] -> ([B*K, size, ...], K): windows of `size` steps every `hop`, the last one zero-padded."""
    t = x.shape[1]
    k = 1 if t <= size else 1 + math.ceil((t - size) / hop)
    total = (k - 1) * hop + size
    if total > t:
        pad = [0, 0] * (x.ndim - 2) + [0, total - t]
        x = F.pad(x, pad)
    windows = x.unfold(1, size, hop)  # [B, K, ..., size]
    windows = windows.movedim(-1, 2)  # [B, K, size, ...]
    return windows.reshape(-1, *windows.shape[2:]), k


def merge_windows(h: Tensor, batch: int) -> Tensor:
    """[B*K, F, H] -> [B, K*F, H]: the frames of consecutive windows one after another."""
    return h.reshape(batch, -1, h.shape[-1])
