"""Embed audio files or texts with a trained model: an .npy of L2-normalised embeddings and an index of their keys.

    python -m tools.embed --checkpoint runs/x/checkpoints/latest --audio-dir clips/ --out emb.npy
    python -m tools.embed --checkpoint ORG/NAME --audio-list files.txt --out emb.npy
    python -m tools.embed --checkpoint runs/x/checkpoints/step_N --texts captions.txt --out text.npy

--checkpoint: a training checkpoint, a saved model folder or a hub id. --audio-dir: every audio file below the folder
(keys: paths relative to it); --audio-list: one path per line (relative paths are relative to the list's folder;
keys: the lines as written); --texts: one text per line (keys: the texts). Row i of OUT is the embedding of line i of
the index (default OUT with .keys.txt instead of .npy). Files that cannot be decoded are left out and listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tools.model_cli import add_model_options, load_model_from_args
from trainer.cli import program_name


def read_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (line ends stripped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: file not found")
    try:
        lines = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{what} {path}: no lines")
    return lines


def audio_from_dir(folder: Path) -> tuple[list[Path], list[str]]:
    from shards.audio import AUDIO_SUFFIXES, list_audio_files

    if not folder.is_dir():
        raise FileNotFoundError(f"--audio-dir {folder}: not a directory")
    files = list_audio_files(folder, recursive=True)
    if not files:
        raise ValueError(
            f"--audio-dir {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in it or below it"
        )
    return files, [f.relative_to(folder).as_posix() for f in files]


def audio_from_list(path: Path) -> tuple[list[Path], list[str]]:
    keys = read_lines(path, "--audio-list")
    return [Path(k) if Path(k).is_absolute() else path.parent / k for k in keys], keys


def index_path(out: Path, given: Path | None) -> Path:
    return given if given is not None else out.with_name(out.name.removesuffix(".npy") + ".keys.txt")


def write_outputs(out: Path, index: Path, embeddings: np.ndarray, keys: list[str]) -> None:
    """OUT (.npy, float32) and the index (one key per line), each written to a temporary name and renamed."""
    bad = [k for k in keys if "\n" in k or "\r" in k]
    if bad:
        raise ValueError(f"key {bad[0]!r}: contains a line break, cannot be written to the index")
    out.parent.mkdir(parents=True, exist_ok=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, embeddings.astype(np.float32, copy=False))
    tmp.replace(out)
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")
    tmp.replace(index)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.embed"), description=__doc__.split("\n")[0])
    add_model_options(p, "clips or texts per forward pass")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio-dir", type=Path, help="embed every audio file in this folder and below it")
    src.add_argument(
        "--audio-list", type=Path, help="embed the audio files listed in this file, one per line"
    )
    src.add_argument("--texts", type=Path, help="embed the texts of this file, one per line")
    p.add_argument("--out", required=True, type=Path, help="embeddings to write (.npy, [N, D] float32)")
    p.add_argument(
        "--index", type=Path, default=None, help="keys to write, one per line (default OUT.keys.txt)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from shards.audio import AudioError
    from trainer.checkpoint import CheckpointError
    from trainer.model.inference import embed_files

    args = build_parser().parse_args(argv)
    progress = sys.stdout.isatty()
    try:
        if args.out.suffix != ".npy":
            raise ValueError(f"--out {args.out}: must end in .npy")
        if args.texts is not None:
            keys = read_lines(args.texts, "--texts")
        else:
            files, keys = (
                audio_from_dir(args.audio_dir) if args.audio_dir else audio_from_list(args.audio_list)
            )
        model = load_model_from_args(args)
        skipped: list[tuple[str, str]] = []
        if args.texts is not None:
            emb = model.embed_text(keys, batch_size=args.batch_size, progress=progress).numpy()
        else:
            out, kept, skipped = embed_files(model, files, args.batch_size, args.max_seconds, progress)
            emb, keys = out.numpy(), [keys[i] for i in kept]
            if not keys:
                raise ValueError(
                    f"no audio file could be decoded ({len(skipped)} tried), e.g. {skipped[0][1]}"
                )
        index = index_path(args.out, args.index)
        write_outputs(args.out, index, emb, keys)
    except (ValueError, OSError, ImportError, CheckpointError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(
        f"wrote {args.out} ({emb.shape[0]} x {emb.shape[1]}) and {index}"
        + (f"; {len(skipped)} skipped" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
