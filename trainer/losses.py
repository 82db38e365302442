"""Training losses as pure functions (DESIGN.md "Losses").

- :func:`clip_contrastive_loss`: symmetric clip-level InfoNCE over the global batch (weak captions).
- :func:`region_contrastive_loss`: TACOS frame-level loss between audio frames and region captions (strong).
- :func:`temporal_order_loss`: optional margin term that makes caption embeddings sensitive to event order.

Under ``torch.distributed`` with world size > 1 the first two gather embeddings from all ranks, so every rank
computes the loss of the global batch. The embedding gradients each rank gets are the gradients of that global
loss with respect to its own embeddings, i.e. exactly what one process would get on the concatenated batch.

Ids that must agree across ranks (``clip_ids``, ``text_ids``) are global: use :func:`string_ids` on the sample
keys / caption strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from shards.schema import stable_id
from trainer.distributed import rank_world

# A region spans frames [floor(onset * rate), ceil(offset * rate)); this slack keeps float noise such as
# 0.2 * 25 = 5.000000000000001 from adding a frame.
_FRAME_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Cross-rank gathering
# ---------------------------------------------------------------------------------------------------------------------


def _all_gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def _all_gather_varsize(x: Tensor, sizes: list[int]) -> list[Tensor]:
    """Every rank's `x` (first dims may differ, given by `sizes`), without gradient."""
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return [p[:n] for p, n in zip(parts, sizes)]


def gather_features(x: Tensor) -> Tensor:
    """All ranks' `x` concatenated on dim 0; the local slice is `x` itself, so only it carries gradient.

    This is open_clip's ``gather_features`` (gather_with_grad=False): every rank then computes the same
    global loss, and the gradient w.r.t. the local embeddings is that loss's full gradient for them.
    """
    rank, world = rank_world()
    if world == 1:
        return x
    parts = _all_gather_varsize(x, _all_gather_sizes(x.shape[0], x.device))
    parts[rank] = x
    return torch.cat(parts)


class _GatherSumGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients of all ranks into the owner's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int) -> Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat(_all_gather_varsize(x, sizes))

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """All ranks' `x` concatenated on dim 0, differentiable: every rank's loss sends gradient to every slice.

    Use it when each rank computes only its share of a loss (the region loss): the backward pass sums the
    shares' gradients, so it is a collective every rank must reach.
    """
    rank, world = rank_world()
    if world == 1:
        return x
    if sizes is None:
        sizes = _all_gather_sizes(x.shape[0], x.device)
    return _GatherSumGrad.apply(x, sizes, rank)


def string_ids(strings: Sequence[str]) -> Tensor:
    """Stable int64 ids of strings (same string -> same id on every rank and run), e.g. for clip_ids/text_ids.

    The ids `shards.schema.stable_id` gives, i.e. the ones the reader puts in batches.
    """
    return torch.tensor([stable_id(s) for s in strings], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------------
# Weak: clip-level InfoNCE
# ---------------------------------------------------------------------------------------------------------------------


DUPLICATE_AUDIO = ("negative", "mask", "positive")
"""What rows i != j with equal `clip_ids` (the same audio with two captions) are to each other in the clip loss."""


def clip_contrastive_loss(
    audio: Tensor,
    text: Tensor,
    logit_scale: Tensor | float,
    clip_ids: Tensor | None = None,
    duplicate_audio: str = "mask",
) -> Tensor:
    """Symmetric InfoNCE between paired rows of `audio` [N, D] and `text` [N, D] over the global batch.

    `logit_scale` is the multiplier 1/τ; ``C = a tᵀ · logit_scale``. Rows i != j with equal `clip_ids` (the same
    audio with two captions) are, by `duplicate_audio`:

    - ``"mask"``: not negatives of each other: their logits are masked to -inf and
      ``L = -½ (mean diag log_softmax(C, 0) + mean diag log_softmax(C, 1))``;
    - ``"negative"``: ordinary negatives (the same L without masking; TACOS' weak loss);
    - ``"positive"``: positives (the DCASE 2025 baseline): with ``I[i, j] = clip_ids[i] == clip_ids[j]`` (diagonal
      included), ``L = -½ (mean_{I} log_softmax(C, 0) + mean_{I} log_softmax(C, 1))``, means over every same-audio
      pair.

    Without `clip_ids` every row is its own audio and the three agree.
    """
    if duplicate_audio not in DUPLICATE_AUDIO:
        raise ValueError(
            f"clip_contrastive_loss: duplicate_audio must be one of {DUPLICATE_AUDIO}, got {duplicate_audio!r}"
        )
    if audio.ndim != 2 or text.ndim != 2 or audio.shape != text.shape:
        raise ValueError(
            f"clip_contrastive_loss: audio and text must both be [N, D] with equal shapes, got "
            f"audio {tuple(audio.shape)} and text {tuple(text.shape)}"
        )
    if clip_ids is not None and clip_ids.shape != (audio.shape[0],):
        raise ValueError(
            f"clip_contrastive_loss: clip_ids must have shape ({audio.shape[0]},), got {tuple(clip_ids.shape)}"
        )
    a = _at_least_float32(gather_features(audio))
    t = _at_least_float32(gather_features(text))
    n = a.shape[0]
    if n == 0:
        return (audio.sum() + text.sum()) * 0.0
    if duplicate_audio == "negative":
        clip_ids = None
    with _full_precision(a.device):
        return _clip_loss(a, t, logit_scale, clip_ids, duplicate_audio == "positive")


def _clip_loss(
    a: Tensor, t: Tensor, logit_scale: Tensor | float, clip_ids: Tensor | None, positive: bool
) -> Tensor:
    n = a.shape[0]
    if isinstance(logit_scale, Tensor):
        logit_scale = _at_least_float32(logit_scale)
    logits = (a @ t.T) * logit_scale
    if clip_ids is not None:
        ids = gather_features(clip_ids.to(a.device))
        same = ids[:, None] == ids[None, :]
        if positive:
            return -0.5 * (
                F.log_softmax(logits, dim=0)[same].mean() + F.log_softmax(logits, dim=1)[same].mean()
            )
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    diag = torch.arange(n, device=logits.device)
    log_p_audio = F.log_softmax(logits, dim=0)[diag, diag]
    log_p_text = F.log_softmax(logits, dim=1)[diag, diag]
    return -0.5 * (log_p_audio.mean() + log_p_text.mean())


# ---------------------------------------------------------------------------------------------------------------------
# Strong: TACOS frame-level region loss
# ---------------------------------------------------------------------------------------------------------------------


def region_frame_mask(
    onsets: Tensor, offsets: Tensor, frame_rate: float, num_frames: int, device: torch.device | None = None
) -> Tensor:
    """[R, num_frames] bool: frame f belongs to region r iff floor(onset·rate) <= f < ceil(offset·rate)."""
    on = torch.floor(onsets.double() * frame_rate + _FRAME_EPS).long()
    off = torch.ceil(offsets.double() * frame_rate - _FRAME_EPS).long()
    f = torch.arange(num_frames, device=device if device is not None else onsets.device)
    return (f[None, :] >= on[:, None].to(f.device)) & (f[None, :] < off[:, None].to(f.device))


def _first_of_groups(keys: Tensor) -> Tensor:
    """[N] bool: row i is the first row with its value of `keys` [N, K]."""
    if keys.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=keys.device)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    index = torch.arange(keys.shape[0], device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, inverse, index, reduce="amin")
    return first[inverse] == index


def region_contrastive_loss(
    frames: Tensor,
    frame_mask: Tensor,
    frame_rate: float,
    region_text: Tensor,
    region_clip: Tensor,
    onsets: Tensor,
    offsets: Tensor,
    strong_tau: float,
    text_ids: Tensor | None = None,
    clip_ids: Tensor | None = None,
) -> Tensor:
    """TACOS ``contrastive_region_loss``, vectorised over regions and global over ranks.

    frames [B, F, D] and region_text [R, D] are L2-normalised; frame_mask [B, F] marks real-audio frames;
    region r belongs to clip region_clip[r] of the local batch and spans [onsets[r], offsets[r]) seconds of
    the audio window. For each region the frames inside it are scored against its own caption and the unique
    region captions of every other clip in the global batch (unique within each clip, by `text_ids`, or by
    exact embedding equality when it is None); log-softmax over these texts per frame with temperature
    `strong_tau`; the region's loss is minus its own caption's mean log-prob over its frames. The result is the
    mean over all regions of all ranks; regions with no real-audio frame are left out. `clip_ids` [B] (int64,
    global identities, e.g. hashes of the sample keys) make the same audio appearing twice in the global batch one
    clip: its captions are then never negatives of itself.
    """
    _check_region_inputs(frames, frame_mask, region_text, region_clip, onsets, offsets, text_ids)
    rank, world = rank_world()
    device = frames.device
    num_clips, num_frames, _ = frames.shape
    num_regions = region_text.shape[0]

    if world > 1:
        sizes = torch.tensor([num_regions, num_clips], dtype=torch.long, device=device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes)
        region_sizes = [int(s[0]) for s in all_sizes]
        clip_sizes = [int(s[1]) for s in all_sizes]
    else:
        region_sizes, clip_sizes = [num_regions], [num_clips]
    region_start, clip_start = sum(region_sizes[:rank]), sum(clip_sizes[:rank])

    region_clip = region_clip.to(device)
    if clip_ids is None:
        own_clip = torch.arange(num_clips, device=device) + clip_start  # position in the global batch
    else:
        if clip_ids.shape != (num_clips,):
            raise ValueError(f"clip_ids: expected shape [{num_clips}], got {list(clip_ids.shape)}")
        own_clip = clip_ids.to(device=device, dtype=torch.long)
    texts = gather_with_grad(region_text, region_sizes)  # [G, D]
    text_clip = _gather_all(own_clip[region_clip], region_sizes)  # [G] clip identity of each caption
    if text_ids is None:
        _, text_key = torch.unique(texts.detach(), dim=0, return_inverse=True)
    else:
        text_key = _gather_all(text_ids.to(device), region_sizes)
    unique_in_clip = _first_of_groups(torch.stack([text_clip, text_key], dim=1))

    with _full_precision(device):
        # Frame-text similarities of every local clip with every caption in the global batch.
        scores = torch.einsum("bfd,gd->bfg", _at_least_float32(frames), _at_least_float32(texts)) / strong_tau
        negative = unique_in_clip[None, :] & (text_clip[None, :] != own_clip[:, None])  # [B, G]
        lowest = torch.finfo(
            scores.dtype
        ).min  # not -inf: a clip without negatives must not give NaN gradients
        negative_lse = torch.logsumexp(scores.masked_fill(~negative[:, None, :], lowest), dim=-1)  # [B, F]

        own_text = torch.arange(num_regions, device=device) + region_start
        positive = scores[region_clip, :, own_text]  # [R, F]
        log_prob = positive - torch.logaddexp(negative_lse[region_clip], positive)

        inside = region_frame_mask(onsets, offsets, frame_rate, num_frames, device) & frame_mask[region_clip]
        count = inside.sum(dim=1)
        valid = count > 0
        region_loss = -torch.where(inside, log_prob, 0.0).sum(dim=1) / count.clamp(min=1)
        local_sum = torch.where(valid, region_loss, 0.0).sum()

    totals = torch.stack([local_sum.detach().double(), valid.sum().double()])
    if world > 1:
        dist.all_reduce(totals)
    global_sum, total_regions = totals[0], totals[1]
    if total_regions == 0:
        return (frames.sum() + texts.sum()) * 0.0
    # Value: the global mean. Gradient: this rank's share; gather_with_grad adds the other ranks' shares.
    rest = (global_sum - local_sum.detach().double()).to(local_sum.dtype)
    return (local_sum + rest) / total_regions.to(local_sum.dtype)


def _full_precision(device: torch.device):
    """Autocast off: the losses' matmuls run in float32 even inside a mixed-precision forward."""
    return torch.autocast(device_type=device.type, enabled=False)


def _at_least_float32(x: Tensor) -> Tensor:
    # Losses run in float32 (or float64) even when the embeddings come out of autocast in half precision.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _gather_all(x: Tensor, sizes: list[int]) -> Tensor:
    if len(sizes) == 1:
        return x
    return torch.cat(_all_gather_varsize(x, sizes))


def _check_region_inputs(frames, frame_mask, region_text, region_clip, onsets, offsets, text_ids) -> None:
    where = "region_contrastive_loss"
    if frames.ndim != 3:
        raise ValueError(f"{where}: frames must be [B, F, D], got {tuple(frames.shape)}")
    if frame_mask.shape != frames.shape[:2] or frame_mask.dtype != torch.bool:
        raise ValueError(
            f"{where}: frame_mask must be bool {tuple(frames.shape[:2])}, got {frame_mask.dtype} "
            f"{tuple(frame_mask.shape)}"
        )
    num_regions = region_text.shape[0]
    if region_text.ndim != 2 or region_text.shape[1] != frames.shape[2]:
        raise ValueError(
            f"{where}: region_text must be [R, {frames.shape[2]}], got {tuple(region_text.shape)}"
        )
    for name, t in (
        ("region_clip", region_clip),
        ("onsets", onsets),
        ("offsets", offsets),
        ("text_ids", text_ids),
    ):
        if t is not None and t.shape != (num_regions,):
            raise ValueError(f"{where}: {name} must have shape ({num_regions},), got {tuple(t.shape)}")
    if num_regions and (int(region_clip.min()) < 0 or int(region_clip.max()) >= frames.shape[0]):
        raise ValueError(
            f"{where}: region_clip values must index the {frames.shape[0]} clips of the batch, got "
            f"{region_clip.min().item()}..{region_clip.max().item()}"
        )
    if num_regions and bool((offsets < onsets).any()):
        bad = int(torch.nonzero(offsets < onsets)[0])
        raise ValueError(
            f"{where}: region {bad} ends before it starts (onset {onsets[bad].item()}, offset {offsets[bad].item()})"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Temporal order (DTU)
# ---------------------------------------------------------------------------------------------------------------------

# Connective -> (order-preserving rewrite, order-reversing rewrite) of "A <connective> B".
_CONNECTIVES = {
    "followed by": ("{B} preceded by {A}", "{B} followed by {A}"),
    "preceded by": ("{B} followed by {A}", "{B} preceded by {A}"),
    "before": ("{B} after {A}", "{B} before {A}"),
    "after": ("{B} before {A}", "{B} after {A}"),
    "then": ("{B} after {A}", "{B} then {A}"),
}
_CONNECTIVE_RE = re.compile(
    r"(?:,\s*)?(?:\band\s+)?\b(followed by|preceded by|before|after|then)\b", re.IGNORECASE
)


def temporal_order_texts(caption: str) -> tuple[str, str] | None:
    """(order-preserving paraphrase, order-reversed caption) of "A <connective> B", or None.

    Connectives: "followed by", "preceded by", "before", "after", "then" (also ", then" / "and then"). Captions
    with no connective or more than one are left alone (None), as are those with an empty side.
    """
    matches = list(_CONNECTIVE_RE.finditer(caption))
    if len(matches) != 1:
        return None
    m = matches[0]
    left = caption[: m.start()].strip(" ,;")
    right = caption[m.end() :].strip()
    end = ""
    while right and right[-1] in ".!?":
        end, right = right[-1] + end, right[:-1]
    right = right.strip(" ,;")
    if not left or not right:
        return None
    capital = caption[:1].isupper()
    a, b = _lower_first(left), _lower_first(right)
    paraphrase, reversal = _CONNECTIVES[m.group(1).lower()]
    return tuple(  # type: ignore[return-value]
        _finish(t.format(A=a, B=b), capital, end) for t in (paraphrase, reversal)
    )


def _lower_first(text: str) -> str:
    # Keep acronyms ("TV", "A/C") as they are.
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def _finish(text: str, capital: bool, end: str) -> str:
    if capital:
        text = text[:1].upper() + text[1:]
    return text + end


def temporal_order_loss(anchor: Tensor, paraphrase: Tensor, reversal: Tensor, margin: float = 0.2) -> Tensor:
    """Mean of max(0, margin - cos(anchor, paraphrase) + cos(anchor, reversal)) over rows of [N, D] embeddings.

    Inputs are L2-normalised embeddings, so dot products are cosines. With no rows the loss is 0.
    """
    if not (anchor.shape == paraphrase.shape == reversal.shape) or anchor.ndim != 2:
        raise ValueError(
            f"temporal_order_loss: anchor, paraphrase and reversal must be [N, D] of equal shape, got "
            f"{tuple(anchor.shape)}, {tuple(paraphrase.shape)}, {tuple(reversal.shape)}"
        )
    if anchor.shape[0] == 0:
        return (anchor.sum() + paraphrase.sum() + reversal.sum()) * 0.0
    a, p, r = (_at_least_float32(x) for x in (anchor, paraphrase, reversal))
    return F.relu(margin - (a * p).sum(-1) + (a * r).sum(-1)).mean()
