"""Two real torch.distributed (gloo) processes, each with 2 DataLoader workers: disjoint training data,
the same batch kinds at every step, and evaluation that covers every sample exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from shards.mixing import MixedStream
from shards.reader import iter_eval_batches
from trainer.config import DataConfig, SourceConfig

WORLD = 2
STEPS = 12


def _rank_main(rank: int, root: str, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = Path(root)
        cfg = DataConfig(
            sample_rate=8000,
            clip_seconds=0.5,
            batch_size=4,
            num_workers=2,
            weak=[SourceConfig("wa", str(data / "wa"), 1.0), SourceConfig("wb", str(data / "wb"), 2.0)],
            strong=[SourceConfig("st", str(data / "st"), 1.0)],
            strong_prob=0.4,
            shuffle_buffer=6,
        )
        stream = MixedStream(cfg, rank=dist.get_rank(), world_size=dist.get_world_size(), seed=11)
        it = iter(stream)
        train = [(b["kind"], b["keys"]) for b in (next(it) for _ in range(STEPS))]
        it.close()
        evaluated = [
            k
            for b in iter_eval_batches(
                str(data / "st"), sample_rate=8000, batch_size=4, rank=rank, world_size=WORLD, num_workers=2
            )
            for k in b["keys"]
        ]
        gathered: list = [None] * WORLD
        dist.all_gather_object(gathered, {"train": train, "eval": evaluated, "seen": stream.data_seen})
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_ranks_read_disjoint_data_and_evaluate_each_sample_once(toy_data, tmp_path):
    out = tmp_path / "result.json"
    args = (str(toy_data), str(tmp_path / "init"), str(out))
    # fork: ranks (and their DataLoader workers, which inherit the start method) skip re-importing torch
    mp.start_processes(_rank_main, args=args, nprocs=WORLD, join=True, start_method="fork")
    ranks = json.loads(out.read_text())
    kinds = [[kind for kind, _ in r["train"]] for r in ranks]
    assert kinds[0] == kinds[1] and {"weak", "strong"} <= set(kinds[0])
    keys = [{k for _, batch in r["train"] for k in batch} for r in ranks]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert all(sum(r["seen"].values()) == STEPS * 4 for r in ranks)
    evaluated = ranks[0]["eval"] + ranks[1]["eval"]
    assert sorted(evaluated) == [f"st-{i:04d}" for i in range(30)]
