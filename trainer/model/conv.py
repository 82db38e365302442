"""A small convolutional audio encoder (tests, the demo, quick experiments): log-mel -> conv stem -> ConvNeXt blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trainer.model.frontend import FeatureSpec, LogMel, frames_mask, resample_mask

TIME_STRIDE = 4  # the stem halves time twice
LOGMEL_MEAN, LOGMEL_STD = (
    -4.0,
    2.0,
)  # natural-log mel power of typical [-1, 1] audio (measured on the demo data)


class ConvBlock(nn.Module):
    """ConvNeXt block over time: depthwise conv, LayerNorm, pointwise MLP, residual."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # Zeroing padding first makes real frames independent of how much padding follows them.
        x = x * mask[..., None]
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(F.gelu(self.fc1(self.norm(h))))


class ConvBackend(nn.Module):
    """[B, N] waveform -> [B, F, hidden] at ≈ `frame_rate` Hz (exactly sample_rate / (4 · hop))."""

    def __init__(self, sample_rate: int, hidden_size: int, num_layers: int, n_mels: int, frame_rate: float):
        super().__init__()
        hop = max(1, round(sample_rate / (frame_rate * TIME_STRIDE)))
        n_fft = 2 ** math.ceil(math.log2(2.5 * hop))
        self.sample_rate = sample_rate
        self.hidden_size = hidden_size
        self.frame_rate = sample_rate / (hop * TIME_STRIDE)
        self.mel = LogMel(
            FeatureSpec(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, f_min=20.0)
        )
        self.in_scale = nn.Parameter(torch.full((n_mels,), 1.0 / LOGMEL_STD))
        self.in_shift = nn.Parameter(torch.full((n_mels,), -LOGMEL_MEAN / LOGMEL_STD))
        channels = max(8, hidden_size // 4)
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
        )
        self.proj = nn.Linear(channels * math.ceil(math.ceil(n_mels / 2) / 2), hidden_size)
        self.blocks = nn.ModuleList(ConvBlock(hidden_size) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.checkpointing = enabled

    def forward(self, wave: Tensor, mask: Tensor) -> Tensor:
        feats = self.mel(wave)  # [B, T, M] natural-log mel energies
        real = resample_mask(mask, feats.shape[1])
        # Raw log-mel values share a large offset that makes every clip look alike to a random network (clip
        # embeddings at init had cosine ~0.9996 with each other), which stalls contrastive training from scratch.
        # A learnable per-bin affine map, started at (x - LOGMEL_MEAN) / LOGMEL_STD, removes it; unlike a
        # BatchNorm it keeps frames independent of each other and has no float32 buffers for DeepSpeed bf16 to trip on.
        feats = feats.to(self.in_scale.dtype) * self.in_scale + self.in_shift
        feats = torch.where(real[..., None], feats, torch.zeros_like(feats))
        x = self.stem(feats[:, None])  # [B, C, T/4, M/4]
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))  # [B, F, H]
        frame_mask = frames_mask(mask, x.shape[1], self.frame_rate, self.sample_rate).to(x.dtype)
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, frame_mask, use_reentrant=False)
            else:
                x = block(x, frame_mask)
        return self.norm(x)
