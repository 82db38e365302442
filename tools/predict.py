"""Score text queries against a folder of audio files (as the DCASE language-based audio retrieval baseline).

    python -m tools.predict --checkpoint runs/x/checkpoints/step_N --queries queries.csv --audio-dir audio/ --out sim.csv

queries.csv has a `caption` column; the output CSV has one row per query (first column `caption`) and one column per
audio file (its file name), holding the cosine similarity of query and clip embeddings.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainer.cli import program_name


def read_queries(path: Path) -> list[str]:
    """The non-empty `caption` column of a CSV; an error names the file when the column or the queries are missing."""
    if not path.is_file():
        raise FileNotFoundError(f"--queries {path}: file not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "caption" not in reader.fieldnames:
            raise ValueError(f"{path}: needs a 'caption' column, found {reader.fieldnames}")
        queries = [(row.get("caption") or "").strip() for row in reader]
    if not queries or not all(queries):
        raise ValueError(f"{path}: every row needs a non-empty caption ({len(queries)} rows)")
    return queries


def list_audio(folder: Path) -> list[Path]:
    """Audio files directly inside `folder`, sorted by name."""
    from shards.audio import AUDIO_SUFFIXES, list_audio_files

    if not folder.is_dir():
        raise FileNotFoundError(f"--audio-dir {folder}: not a directory")
    files = list_audio_files(folder)
    if not files:
        raise ValueError(f"--audio-dir {folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


def load_batch(paths: Sequence[Path], sample_rate: int, max_seconds: float | None) -> dict[str, torch.Tensor]:
    """Decoded, resampled clips padded into {"audio" [B, N], "audio_mask" [B, N]}."""
    from trainer.model.inference import audio_batch

    return audio_batch(paths, None, sample_rate, max_seconds)


def predict(
    model,
    queries: Sequence[str],
    audio_paths: Sequence[Path],
    sample_rate: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_seconds: float | None = None,
) -> np.ndarray:
    """[Q, N] cosine similarities of the queries with the audio files.

    Text and audio chunks go through the model together; once one side is done the other goes alone.
    """
    from trainer.embed import eval_mode, forward_batch

    device = torch.device(device)
    text_chunks = [list(queries[i : i + batch_size]) for i in range(0, len(queries), batch_size)]
    audio_chunks = [list(audio_paths[i : i + batch_size]) for i in range(0, len(audio_paths), batch_size)]
    text_emb: list[np.ndarray] = []
    audio_emb: list[np.ndarray] = []
    with eval_mode(model):
        for step in range(max(len(text_chunks), len(audio_chunks))):
            batch = (
                load_batch(audio_chunks[step], sample_rate, max_seconds) if step < len(audio_chunks) else None
            )
            texts = text_chunks[step] if step < len(text_chunks) else None
            out = forward_batch(model, batch, texts, device)
            if batch is not None:
                audio_emb.append(out.audio_clip.float().cpu().numpy())
            if texts is not None:
                text_emb.append(out.text.float().cpu().numpy())
    return np.concatenate(text_emb) @ np.concatenate(audio_emb).T


def write_csv(path: Path, queries: Sequence[str], names: Sequence[str], sim: np.ndarray) -> None:
    """Rows = queries (first column `caption`), columns = audio file names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption", *names])
        for query, row in zip(queries, sim):
            writer.writerow([query, *(f"{v:.6f}" for v in row)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.predict"), description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN/checkpoints/step_N")
    p.add_argument("--queries", required=True, type=Path, help="CSV with a 'caption' column")
    p.add_argument("--audio-dir", required=True, type=Path, help="folder of audio files to rank")
    p.add_argument("--out", required=True, type=Path, help="CSV of similarities to write")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample-rate", type=int, default=None, help="default: the model's sample rate")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="use only the first S seconds of each file"
    )
    p.add_argument("--device", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import CheckpointError, checkpoint_sample_rate, load_model, model_dir
    from trainer.distributed import local_device

    args = build_parser().parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise ValueError(f"--batch-size: must be > 0, got {args.batch_size}")
        if args.max_seconds is not None and args.max_seconds <= 0:
            raise ValueError(f"--max-seconds: must be > 0, got {args.max_seconds}")
        queries = read_queries(args.queries)
        files = list_audio(args.audio_dir)
        model_dir(args.checkpoint, "--checkpoint")
        device = local_device(args.device)
        model = load_model(args.checkpoint, device, "--checkpoint").eval()
        sample_rate = checkpoint_sample_rate(args.checkpoint, args.sample_rate, model)
        sim = predict(model, queries, files, sample_rate, args.batch_size, device, args.max_seconds)
        write_csv(args.out, queries, [f.name for f in files], sim)
    except (ValueError, OSError, ImportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(queries)} queries x {len(files)} audio files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
