"""Two real gloo processes: gathered losses and their gradients equal one process on the concatenated batch
(the clip loss with each treatment of repeated audio: mask, positive as DCASE, negative as TACOS)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from trainer.losses import clip_contrastive_loss, region_contrastive_loss

WORLD = 2
CLIP_ROWS = [3, 2]  # uneven local batches
CLIPS = [3, 2]
FRAMES, DIM, FRAME_RATE, TAU = 12, 8, 4.0, 0.1


def make_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = sum(CLIP_ROWS)
    data = {
        "audio": F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1),
        "text": F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1),
        # rows 0/1 share a clip on rank 0; rows 2 (rank 0) and 3 (rank 1) share one across ranks
        "clip_ids": torch.tensor([11, 11, 12, 12, 13]),
        "frames": F.normalize(torch.randn(sum(CLIPS), FRAMES, DIM, generator=g, dtype=torch.float64), dim=-1),
    }
    mask = torch.ones(sum(CLIPS), FRAMES, dtype=torch.bool)
    mask[4, 9:] = False
    data["frame_mask"] = mask
    # regions: (global clip, text id, onset, offset); ids repeat within and across clips and ranks
    regions = [(0, 0, 0.0, 1.0), (0, 1, 1.5, 2.5), (0, 0, 2.0, 3.0), (1, 2, 0.2, 0.9), (2, 1, 0.5, 2.75)]
    regions += [(3, 0, 0.0, 2.0), (3, 3, 2.0, 3.0), (4, 1, 1.0, 2.9)]
    table = F.normalize(torch.randn(4, DIM, generator=g, dtype=torch.float64), dim=-1)
    data["region_clip"] = torch.tensor([r[0] for r in regions])
    data["text_ids"] = torch.tensor([r[1] for r in regions])
    data["onsets"] = torch.tensor([r[2] for r in regions], dtype=torch.float64)
    data["offsets"] = torch.tensor([r[3] for r in regions], dtype=torch.float64)
    data["region_text"] = table[data["text_ids"]] + 1e-3 * torch.randn(len(regions), DIM, generator=g)
    return data


def compute(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Both losses and the gradients w.r.t. every input embedding (and the logit scale)."""
    leaves = {k: d[k].clone().requires_grad_() for k in ("audio", "text", "frames", "region_text")}
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    weak = clip_contrastive_loss(leaves["audio"], leaves["text"], log_scale.exp(), d["clip_ids"])
    # DCASE's duplicates-as-positives and TACOS' duplicates-as-negatives, over the same gathered batch
    positive, negative = (
        clip_contrastive_loss(
            leaves["audio"], leaves["text"], log_scale.exp(), d["clip_ids"], duplicate_audio=mode
        )
        for mode in ("positive", "negative")
    )
    strong = region_contrastive_loss(
        leaves["frames"],
        d["frame_mask"],
        FRAME_RATE,
        leaves["region_text"],
        d["region_clip"],
        d["onsets"],
        d["offsets"],
        TAU,
        d["text_ids"],
    )
    (weak + strong + positive + 0.5 * negative).backward()
    out = {"weak": weak.detach(), "strong": strong.detach(), "log_scale_grad": log_scale.grad}
    out.update(positive=positive.detach(), negative=negative.detach())
    out.update({f"{k}_grad": v.grad for k, v in leaves.items()})
    return out


def shard(d: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    r0, r1 = sum(CLIP_ROWS[:rank]), sum(CLIP_ROWS[: rank + 1])
    c0, c1 = sum(CLIPS[:rank]), sum(CLIPS[: rank + 1])
    mine = (d["region_clip"] >= c0) & (d["region_clip"] < c1)
    out = {k: d[k][r0:r1] for k in ("audio", "text", "clip_ids")}
    out.update({k: d[k][c0:c1] for k in ("frames", "frame_mask")})
    out.update({k: d[k][mine] for k in ("region_text", "text_ids", "onsets", "offsets")})
    out["region_clip"] = d["region_clip"][mine] - c0
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(compute(shard(make_data(), rank)), f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    data = make_data()
    single = compute(data)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for r in ranks:
        for key in ("weak", "strong", "positive", "negative", "log_scale_grad"):
            torch.testing.assert_close(r[key], single[key], atol=1e-6, rtol=0)
    # Each rank's gradient for its own embeddings is the single-process gradient of those rows.
    for key in ("audio_grad", "text_grad", "frames_grad", "region_text_grad"):
        gathered = torch.cat([r[key] for r in ranks])
        order = (
            torch.cat([shard(data, r)["region_text"] for r in range(WORLD)])
            if key == "region_text_grad"
            else None
        )
        if order is not None:
            # the per-rank region order is the single-process order here (regions are sorted by clip)
            torch.testing.assert_close(order, data["region_text"])
        torch.testing.assert_close(gathered, single[key], atol=1e-6, rtol=0)
        assert gathered.abs().sum() > 0
