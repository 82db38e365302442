"""Losses against hand-computed values, a per-region loop reference, and behaviour on aligned vs shuffled frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shards.schema import stable_id
from trainer.losses import (
    clip_contrastive_loss,
    region_contrastive_loss,
    region_frame_mask,
    string_ids,
    temporal_order_loss,
    temporal_order_texts,
)


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# ---------------------------------------------------------------------------------------------------------------------
# clip_contrastive_loss
# ---------------------------------------------------------------------------------------------------------------------


def test_clip_loss_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    s = 2.0
    # C = s * a @ t.T = [[1.2, 0.0], [2.0, 1.6]]
    c = [[1.2, 0.0], [2.0, 1.6]]
    text_dir = (c[0][0] - lse(c[0][0], c[0][1])) + (c[1][1] - lse(c[1][0], c[1][1]))  # softmax over row
    audio_dir = (c[0][0] - lse(c[0][0], c[1][0])) + (c[1][1] - lse(c[0][1], c[1][1]))  # softmax over column
    expected = -0.5 * (text_dir / 2 + audio_dir / 2)
    assert clip_contrastive_loss(a, t, s).item() == pytest.approx(expected, abs=1e-6)
    assert clip_contrastive_loss(a, t, torch.tensor(s)).item() == pytest.approx(expected, abs=1e-6)


def test_clip_loss_masks_same_clip_pairs():
    # Rows 0 and 1 are the same audio with two captions: they must not be each other's negatives.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    c = (a @ t.T).tolist()  # [[1, .8, 0], [1, .8, 0], [0, .6, 1]]
    text_dir = (
        (c[0][0] - lse(c[0][0], c[0][2]))
        + (c[1][1] - lse(c[1][1], c[1][2]))
        + (c[2][2] - lse(c[2][0], c[2][1], c[2][2]))
    )
    audio_dir = (
        (c[0][0] - lse(c[0][0], c[2][0]))
        + (c[1][1] - lse(c[1][1], c[2][1]))
        + (c[2][2] - lse(c[0][2], c[1][2], c[2][2]))
    )
    expected = -0.5 * (text_dir / 3 + audio_dir / 3)
    ids = torch.tensor([7, 7, 9])
    assert clip_contrastive_loss(a, t, 1.0, ids).item() == pytest.approx(expected, abs=1e-6)
    unmasked = clip_contrastive_loss(a, t, 1.0)
    assert unmasked.item() > expected  # the duplicate counted as a negative raises the loss


def test_clip_loss_gradients_finite_and_errors():
    a = F.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    t = F.normalize(torch.randn(5, 8), dim=-1).requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = clip_contrastive_loss(a, t, scale.exp(), torch.tensor([0, 0, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(x.grad).all() for x in (a, t, scale))
    with pytest.raises(ValueError, match=r"audio \(5, 8\) and text \(4, 8\)"):
        clip_contrastive_loss(a, t[:4], 1.0)
    with pytest.raises(ValueError, match="clip_ids must have shape"):
        clip_contrastive_loss(a, t, 1.0, torch.zeros(3, dtype=torch.long))


def dcase_loss(audio_embeddings, text_embeddings, tau, batch):
    """CPJKU/dcase2025_task6_baseline d25_t6/retrieval_module.py AudioRetrievalModel.training_step, line by line from
    the similarities on (the model's forward is replaced by the given embeddings)."""
    # compute pairwise similarities
    C = torch.matmul(audio_embeddings, text_embeddings.T)
    # scale cosine similarities with temperature < 1
    C = C / torch.abs(tau)
    # compute P(a|t) and P(t|a)
    C_audio = torch.log_softmax(C, dim=0)
    C_text = torch.log_softmax(C, dim=1)
    # prediction target
    paths = np.array(
        [hash(batch["dataset"][i] + batch["subset"][i] + p) for i, p in enumerate(batch["fname"])]
    )
    I = torch.tensor(paths[None, :] == paths[:, None])  # noqa: E741 (their name)
    loss = -0.5 * (C_audio[torch.where(I)].mean() + C_text[torch.where(I)].mean())
    return loss


def tacos_weak_loss(a, t, tau, batch):
    """OptimusPrimus/tacos tacos/retrieval_module.py training_step, the weak (clip) part, line by line from the
    similarities on; with Clotho(flat_captions=True) every row holds one caption."""
    C = torch.matmul(a, t.T)
    C = C / torch.abs(tau)
    sample_ids = np.array([i for i, cs in enumerate(batch["captions"]) for c in cs])
    batch_mask = sample_ids[:, None] == sample_ids[None, :]
    np.fill_diagonal(batch_mask, False)
    C[batch_mask] = -torch.inf
    C_audio = torch.log_softmax(C, dim=0)
    C_text = torch.log_softmax(C, dim=1)
    I = torch.eye(C_audio.shape[0])  # noqa: E741 (their name)
    loss = -0.5 * (C_audio[torch.where(I)].mean() + C_text[torch.where(I)].mean())
    return loss


def clotho_pairs_batch(seed: int = 0):
    """A DCASE-style batch of (clip, caption) pairs: 16 rows from 5 clips with 5 captions each, one clip thrice, one
    twice, three once... in random order; audio rows of one clip differ a little (dropout, crops), as in training."""
    g = torch.Generator().manual_seed(seed)
    rows = (
        ["a.wav"] * 5 + ["b.wav"] * 3 + ["c.wav"] * 2 + ["d.wav", "e.wav", "f.wav", "g.wav", "h.wav", "i.wav"]
    )
    order = torch.randperm(len(rows), generator=g).tolist()
    fnames = [rows[i] for i in order]
    clips = {f: torch.randn(8, generator=g, dtype=torch.float64) for f in sorted(set(fnames))}
    audio = F.normalize(torch.stack([clips[f] + 0.3 * torch.randn(8, generator=g) for f in fnames]), dim=-1)
    text = F.normalize(torch.stack([clips[f] + torch.randn(8, generator=g) for f in fnames]), dim=-1)
    batch = {"fname": fnames, "dataset": ["clotho"] * len(rows), "subset": ["dev"] * len(rows)}
    batch["captions"] = [[f"caption {i}"] for i in range(len(rows))]
    return audio, text, batch


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicate_audio_positive_equals_the_dcase_baseline(seed):
    audio, text, batch = clotho_pairs_batch(seed)
    tau = torch.zeros((1,), dtype=torch.float64) + 0.05  # their initial_tau, tau_trainable false
    ids = string_ids([f"clotho-{f}" for f in batch["fname"]])
    a1, t1, a2, t2 = (x.clone().requires_grad_() for x in (audio, text, audio, text))
    ours = clip_contrastive_loss(a1, t1, 1 / 0.05, ids, duplicate_audio="positive")
    theirs = dcase_loss(a2, t2, tau, batch)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    (ours + theirs).backward()
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-12, rtol=0)
    # it differs from both other treatments of the repeated audio
    for other in ("mask", "negative"):
        assert abs(clip_contrastive_loss(audio, text, 20.0, ids, duplicate_audio=other) - ours) > 1e-3


def test_duplicate_audio_negative_equals_tacos_and_mask_ignores_nothing_without_ids():
    audio, text, batch = clotho_pairs_batch(2)
    ids = string_ids(batch["fname"])
    tau = torch.zeros((1,), dtype=torch.float64) + 0.05
    ours = clip_contrastive_loss(audio, text, 20.0, ids, duplicate_audio="negative")
    torch.testing.assert_close(ours, tacos_weak_loss(audio, text, tau, batch), atol=1e-12, rtol=0)
    for mode in ("negative", "mask", "positive"):  # without ids every row is its own audio
        torch.testing.assert_close(clip_contrastive_loss(audio, text, 20.0, duplicate_audio=mode), ours)
    with pytest.raises(ValueError, match="duplicate_audio must be one of"):
        clip_contrastive_loss(audio, text, 20.0, ids, duplicate_audio="merge")


def test_duplicate_audio_positive_hand_computed():
    # Rows 0 and 1: one audio with two captions. I = {(0,0), (0,1), (1,0), (1,1), (2,2)}.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    c = (a @ t.T).tolist()
    col = [lse(c[0][j], c[1][j], c[2][j]) for j in range(3)]  # log_softmax over audios (dim 0)
    row = [lse(*c[i]) for i in range(3)]  # over texts (dim 1)
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2)]
    audio_dir = sum(c[i][j] - col[j] for i, j in pairs) / 5
    text_dir = sum(c[i][j] - row[i] for i, j in pairs) / 5
    expected = -0.5 * (audio_dir + text_dir)
    got = clip_contrastive_loss(a, t, 1.0, torch.tensor([7, 7, 9]), duplicate_audio="positive")
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_string_ids_stable_and_distinct():
    ids = string_ids(["a dog barks", "a dog barks", "rain"])
    assert ids.dtype == torch.long and ids[0] == ids[1] != ids[2] and (ids >= 0).all()
    assert torch.equal(ids, string_ids(["a dog barks", "a dog barks", "rain"]))
    assert ids.tolist() == [
        stable_id(s) for s in ["a dog barks", "a dog barks", "rain"]
    ]  # the ids batches carry


# ---------------------------------------------------------------------------------------------------------------------
# region_contrastive_loss
# ---------------------------------------------------------------------------------------------------------------------


def test_region_frame_mask_boundaries():
    # 25 Hz: [0.2, 0.44) -> frames 5..10 (0.44 * 25 = 11 exactly: frame 11 starts at the offset, not inside)
    m = region_frame_mask(torch.tensor([0.2, 0.0, 0.4, 0.5]), torch.tensor([0.44, 0.05, 0.4, 0.5]), 25.0, 16)
    assert m[0].nonzero().flatten().tolist() == [5, 6, 7, 8, 9, 10]
    assert m[1].nonzero().flatten().tolist() == [0, 1]  # a partly covered frame counts (ceil)
    assert m[2].sum() == 0  # empty span on a frame boundary
    assert m[3].nonzero().flatten().tolist() == [12]  # an instant inside frame 12


def test_region_loss_hand_computed():
    # 1 Hz frames; clip 0 regions: "x" [0, 2) and "w" [3, 4); clip 1 regions: "y" [1, 2.5) and "y" again [3, 4).
    e = {"x": [1.0, 0.0], "y": [0.0, 1.0], "w": [0.6, 0.8]}
    frames = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]],
            [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]],
        ]
    )
    names = ["x", "w", "y", "y"]
    region_text = torch.tensor([e[n] for n in names])
    region_clip = torch.tensor([0, 0, 1, 1])
    onsets = torch.tensor([0.0, 3.0, 1.0, 3.0])
    offsets = torch.tensor([2.0, 4.0, 2.5, 4.0])
    tau = 0.5
    mask = torch.ones(2, 4, dtype=torch.bool)

    def dot(u, v):
        return (u[0] * v[0] + u[1] * v[1]) / tau

    fr = frames.tolist()
    # Clip 0's regions see clip 1's unique captions {"y"}; clip 1's see clip 0's {"x", "w"}.
    r0 = [dot(fr[0][f], e["x"]) - lse(dot(fr[0][f], e["x"]), dot(fr[0][f], e["y"])) for f in (0, 1)]
    r1 = [dot(fr[0][3], e["w"]) - lse(dot(fr[0][3], e["w"]), dot(fr[0][3], e["y"]))]
    r2 = [
        dot(fr[1][f], e["y"]) - lse(dot(fr[1][f], e["y"]), dot(fr[1][f], e["x"]), dot(fr[1][f], e["w"]))
        for f in (1, 2)
    ]
    r3 = [dot(fr[1][3], e["y"]) - lse(dot(fr[1][3], e["y"]), dot(fr[1][3], e["x"]), dot(fr[1][3], e["w"]))]
    expected = -sum(sum(r) / len(r) for r in (r0, r1, r2, r3)) / 4

    ids = string_ids(names)
    loss = region_contrastive_loss(frames, mask, 1.0, region_text, region_clip, onsets, offsets, tau, ids)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Without ids, identical embeddings are the same caption.
    loss2 = region_contrastive_loss(frames, mask, 1.0, region_text, region_clip, onsets, offsets, tau)
    assert loss2.item() == pytest.approx(expected, abs=1e-6)


def loop_reference(frames, frame_mask, frame_rate, region_text, region_clip, onsets, offsets, tau, text_ids):
    """Plain TACOS-style loop: per clip, per region."""
    num_clips = frames.shape[0]
    unique_of_clip = []
    for i in range(num_clips):
        seen, rows = set(), []
        for r in range(len(region_clip)):
            if int(region_clip[r]) == i and int(text_ids[r]) not in seen:
                seen.add(int(text_ids[r]))
                rows.append(r)
        unique_of_clip.append(rows)
    total, count = 0.0, 0
    for r in range(len(region_clip)):
        i = int(region_clip[r])
        others = [k for j in range(num_clips) if j != i for k in unique_of_clip[j]]
        text = torch.cat([region_text[r : r + 1], region_text[others]])
        on = math.floor(float(onsets[r]) * frame_rate + 1e-6)
        off = math.ceil(float(offsets[r]) * frame_rate - 1e-6)
        idx = [f for f in range(on, min(off, frames.shape[1])) if frame_mask[i, f]]
        if not idx:
            continue
        c = (text[:, None, :] * frames[i, idx][None, :, :]).sum(-1) / tau
        total = total - torch.log_softmax(c, dim=0)[0].mean()
        count += 1
    return total / count


def random_strong_batch(seed, num_clips=4, num_frames=20, dim=8, num_regions=10, vocab=6):
    g = torch.Generator().manual_seed(seed)
    frames = F.normalize(torch.randn(num_clips, num_frames, dim, generator=g), dim=-1)
    frame_mask = torch.ones(num_clips, num_frames, dtype=torch.bool)
    frame_mask[-1, 15:] = False  # a padded clip
    text_ids = torch.randint(0, vocab, (num_regions,), generator=g)
    table = F.normalize(torch.randn(vocab, dim, generator=g), dim=-1)
    region_text = table[text_ids]
    region_clip = torch.randint(0, num_clips, (num_regions,), generator=g)
    onsets = torch.rand(num_regions, generator=g) * 3.0
    offsets = onsets + 0.05 + torch.rand(num_regions, generator=g) * 1.5
    return frames, frame_mask, region_text, region_clip, onsets, offsets, text_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_loss_equals_loop_reference(seed):
    frames, frame_mask, region_text, region_clip, onsets, offsets, text_ids = random_strong_batch(seed)
    frame_rate = 5.0  # 20 frames = 4 s; some regions run past the padded end of the last clip
    args = (frame_mask, frame_rate)
    f1, t1 = frames.clone().requires_grad_(), region_text.clone().requires_grad_()
    f2, t2 = frames.clone().requires_grad_(), region_text.clone().requires_grad_()
    fast = region_contrastive_loss(f1, *args, t1, region_clip, onsets, offsets, 0.1, text_ids)
    slow = loop_reference(f2, *args, t2, region_clip, onsets, offsets, 0.1, text_ids)
    fast.backward()
    slow.backward()
    assert fast.item() == pytest.approx(slow.item(), abs=1e-5)
    torch.testing.assert_close(f1.grad, f2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t1.grad, t2.grad, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(f1.grad).all() and torch.isfinite(t1.grad).all()
    # Frames outside every region (and padding) get no gradient.
    covered = torch.zeros_like(frame_mask)
    inside = region_frame_mask(onsets, offsets, frame_rate, frames.shape[1])
    for r in range(len(region_clip)):
        covered[region_clip[r]] |= inside[r]
    covered &= frame_mask
    assert (f1.grad[~covered] == 0).all()


def test_region_loss_lower_for_aligned_frames_than_time_shuffled():
    g = torch.Generator().manual_seed(3)
    num_clips, num_frames, dim = 6, 40, 16
    frame_rate = 10.0
    captions = F.normalize(torch.randn(12, dim, generator=g), dim=-1)
    frames = 0.3 * torch.randn(num_clips, num_frames, dim, generator=g)
    region_clip, onsets, offsets, text_ids = [], [], [], []
    for i in range(num_clips):
        for k in range(2):  # two disjoint regions per clip, each with its own caption
            cap = 2 * i + k
            on = 0.4 + 2.0 * k + 0.1 * i
            off = on + 1.2
            frames[i, int(on * frame_rate) : math.ceil(off * frame_rate)] += captions[cap]
            region_clip.append(i)
            onsets.append(on)
            offsets.append(off)
            text_ids.append(cap)
    frames = F.normalize(frames, dim=-1)
    region_clip, text_ids = torch.tensor(region_clip), torch.tensor(text_ids)
    onsets, offsets = torch.tensor(onsets), torch.tensor(offsets)
    mask = torch.ones(num_clips, num_frames, dtype=torch.bool)

    def loss(fr):
        return region_contrastive_loss(
            fr, mask, frame_rate, captions[text_ids], region_clip, onsets, offsets, 0.1, text_ids
        ).item()

    shuffled = frames[:, torch.randperm(num_frames, generator=g)]
    aligned = loss(frames)
    assert aligned < 0.5 * loss(shuffled)
    assert aligned < loss(frames.roll(15, dims=1))


def test_region_loss_same_audio_twice_is_one_clip_with_clip_ids():
    g = torch.Generator().manual_seed(5)
    frames = F.normalize(torch.randn(1, 20, 8, generator=g), dim=-1).repeat(
        2, 1, 1
    )  # clip A at positions 0 and 1
    text = F.normalize(torch.randn(1, 8, generator=g), dim=-1).repeat(2, 1)
    mask = torch.ones(2, 20, dtype=torch.bool)
    args = (
        frames,
        mask,
        10.0,
        text,
        torch.tensor([0, 1]),
        torch.tensor([0.2, 0.2]),
        torch.tensor([1.5, 1.5]),
        0.1,
    )
    # By position, each copy's caption is a negative of the other copy: the loss is log 2.
    assert region_contrastive_loss(*args, text_ids=torch.tensor([7, 8])).item() == pytest.approx(math.log(2))
    # With the clips' identities there is no negative at all.
    same = region_contrastive_loss(*args, text_ids=torch.tensor([7, 8]), clip_ids=torch.tensor([42, 42]))
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="clip_ids"):
        region_contrastive_loss(*args, clip_ids=torch.tensor([1, 2, 3]))


def test_region_loss_edge_cases():
    frames = F.normalize(torch.randn(2, 5, 4), dim=-1).requires_grad_()
    mask = torch.ones(2, 5, dtype=torch.bool)
    text = F.normalize(torch.randn(1, 4), dim=-1)
    one = (torch.tensor([0]), torch.tensor([0.0]), torch.tensor([1.0]))
    # A single clip with regions has no negatives: log-softmax over one text is 0, gradients stay finite.
    loss = region_contrastive_loss(frames, mask, 2.0, text, *one, 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(frames.grad).all()
    # No regions at all: zero loss that still backpropagates.
    empty = region_contrastive_loss(
        frames, mask, 2.0, text[:0], torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0), 0.1
    )
    assert empty.item() == 0.0 and empty.requires_grad
    # A region entirely in padding is left out of the mean.
    mask2 = mask.clone()
    mask2[1, 2:] = False
    t2 = F.normalize(torch.randn(2, 4), dim=-1)
    both = region_contrastive_loss(
        frames, mask2, 1.0, t2, torch.tensor([0, 1]), torch.tensor([0.0, 3.0]), torch.tensor([2.0, 5.0]), 0.1
    )
    only_first = loop_reference(
        frames, mask2, 1.0, t2[:1], torch.tensor([0]), torch.tensor([0.0]), torch.tensor([2.0]), 0.1, [0]
    )
    # Clip 0's region still sees clip 1's caption as a negative.
    c = torch.stack([t2[0], t2[1]]) @ frames[0, :2].T / 0.1
    assert both.item() == pytest.approx((-torch.log_softmax(c, 0)[0].mean()).item(), abs=1e-6)
    assert only_first.item() == 0.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"region_clip": torch.tensor([0, 5])}, "region_clip values must index the 2 clips"),
        ({"offsets": torch.tensor([1.0, 0.5])}, r"region 1 ends before it starts \(onset 1.0, offset 0.5\)"),
        ({"onsets": torch.zeros(3)}, r"onsets must have shape \(2,\)"),
        ({"frame_mask": torch.ones(2, 5)}, "frame_mask must be bool"),
    ],
)
def test_region_loss_bad_input_is_named(change, match):
    args = {
        "frames": torch.randn(2, 5, 4),
        "frame_mask": torch.ones(2, 5, dtype=torch.bool),
        "frame_rate": 1.0,
        "region_text": torch.randn(2, 4),
        "region_clip": torch.tensor([0, 1]),
        "onsets": torch.tensor([0.0, 1.0]),
        "offsets": torch.tensor([1.0, 2.0]),
        "strong_tau": 0.1,
    }
    args.update(change)
    with pytest.raises(ValueError, match=match):
        region_contrastive_loss(**args)


# ---------------------------------------------------------------------------------------------------------------------
# Temporal order
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        (
            "A dog barks followed by a car horn.",
            ("A car horn preceded by a dog barks.", "A car horn followed by a dog barks."),
        ),
        (
            "birds chirp preceded by thunder",
            ("thunder followed by birds chirp", "thunder preceded by birds chirp"),
        ),
        (
            "A door closes before footsteps",
            ("Footsteps after a door closes", "Footsteps before a door closes"),
        ),
        ("Rain falls after TV noise!", ("TV noise before rain falls!", "TV noise after rain falls!")),
        (
            "A man speaks, and then a bell rings.",
            ("A bell rings after a man speaks.", "A bell rings then a man speaks."),
        ),
        (
            "A man speaks, then a bell rings",
            ("A bell rings after a man speaks", "A bell rings then a man speaks"),
        ),
        ("A man speaks while a bell rings", None),
        ("A bell rings then a dog barks then rain", None),  # ambiguous: two connectives
        ("After a while", None),  # empty side
        ("Thenardier theme beforehand", None),  # whole words only
    ],
)
def test_temporal_order_texts(caption, expected):
    assert temporal_order_texts(caption) == expected


def test_temporal_order_loss_hand_computed():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    para = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    rev = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # row 0: max(0, 0.2 - 0.8 + 0.6) = 0; row 1: max(0, 0.2 - 1 + 0) = 0 -> 0
    assert temporal_order_loss(anchor, para, rev).item() == pytest.approx(0.0)
    # with margin 0.5: row 0: 0.5 - 0.8 + 0.6 = 0.3; row 1: 0 -> mean 0.15
    assert temporal_order_loss(anchor, para, rev, margin=0.5).item() == pytest.approx(0.15)
    # swapping paraphrase and reversal: row 0: 0.2 - 0.6 + 0.8 = 0.4; row 1: 0.2 - 0 + 1 = 1.2 -> 0.8
    r = rev.clone().requires_grad_()
    loss = temporal_order_loss(anchor, r, para)
    loss.backward()
    assert loss.item() == pytest.approx(0.8) and torch.isfinite(r.grad).all()
    assert temporal_order_loss(anchor[:0], para[:0], rev[:0]).item() == 0.0


def test_losses_run_in_float32_under_autocast():
    g = torch.Generator().manual_seed(5)
    a = F.normalize(torch.randn(6, 16, generator=g), dim=-1).bfloat16()
    t = F.normalize(torch.randn(6, 16, generator=g), dim=-1).bfloat16()
    frames, frame_mask, region_text, region_clip, onsets, offsets, text_ids = random_strong_batch(5)
    frames, region_text = frames.bfloat16(), region_text.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weak = clip_contrastive_loss(a, t, 100.0)
        strong = region_contrastive_loss(
            frames, frame_mask, 5.0, region_text, region_clip, onsets, offsets, 0.1
        )
    assert weak.dtype == strong.dtype == torch.float32
    # Same as computing from the (bf16-rounded) embeddings in float32 outside autocast.
    assert weak.item() == pytest.approx(clip_contrastive_loss(a.float(), t.float(), 100.0).item(), abs=1e-5)
    ref = region_contrastive_loss(
        frames.float(), frame_mask, 5.0, region_text.float(), region_clip, onsets, offsets, 0.1, text_ids
    )
    assert strong.item() == pytest.approx(ref.item(), abs=1e-5)
