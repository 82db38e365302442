"""Export a checkpoint as a hub-ready model folder (and optionally publish it on the Hugging Face hub).

    python -m tools.export --checkpoint runs/x/checkpoints/latest --out exported/my-model
    python -m tools.export --checkpoint runs/x/checkpoints/step_N --out exported/my-model --push-to-hub ORG/NAME

The folder holds config.json (model_type "sonotext"), model.safetensors, the tokenizer, preprocessor_config.json, the
towers' configs and a model card README.md with the towers, the data mixture with weights and samples seen, the
steps and the last evaluation of the run. It is written under a temporary name, loaded back and compared with the
checkpoint's model, then renamed, so an existing OUT is always complete. --push-to-hub uploads it (needs network and
a write token: `hf auth login` or HF_TOKEN).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from trainer.cli import program_name


def check_round_trip(model, folder: Path) -> float:
    """Max abs difference between the model and the folder's copy on a probe clip and text (raises if not ~equal)."""
    from trainer.model import AudioTextModel

    again = AudioTextModel.from_pretrained(folder)
    probe = torch.sin(torch.arange(model.sample_rate) * 0.05) * 0.3  # 1 s of a tone at the model's rate
    texts = ["a probe sound"]
    diff = max(
        (model.embed_audio(probe, model.sample_rate) - again.embed_audio(probe, model.sample_rate))
        .abs()
        .max()
        .item(),
        (model.embed_text(texts) - again.embed_text(texts)).abs().max().item(),
    )
    if diff > 1e-5:
        raise RuntimeError(f"{folder}: the exported model differs from the checkpoint's by {diff:.3g}")
    return diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.export"), description=__doc__.split("\n")[0])
    p.add_argument(
        "--checkpoint", required=True, help="RUN/checkpoints/step_N (or latest), or a saved model folder"
    )
    p.add_argument("--out", required=True, type=Path, help="folder to create (must not exist yet)")
    p.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to ORG/NAME"
    )
    p.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repository as private"
    )
    p.add_argument(
        "--name", default=None, help="how the model card refers to the model (default: REPO_ID or OUT's name)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import CheckpointError, load_model, training_summary
    from trainer.model.hub import is_hub_id, push_folder

    args = build_parser().parse_args(argv)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    try:
        if args.push_to_hub is not None and not is_hub_id(args.push_to_hub):
            raise ValueError(f"--push-to-hub {args.push_to_hub!r}: expected a repository id ORG/NAME")
        if args.out.exists():
            raise FileExistsError(f"--out {args.out}: already exists; choose a new folder")
        model = load_model(args.checkpoint, "cpu", "--checkpoint").eval()
        training = training_summary(args.checkpoint) if Path(args.checkpoint).exists() else {}
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted export
        model.save_pretrained(tmp, training=training, name=args.name or args.push_to_hub or args.out.name)
        check_round_trip(model, tmp)
        tmp.rename(args.out)
    except (ValueError, OSError, ImportError, CheckpointError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    steps = f", step {training['step']}" if training.get("step") is not None else ""
    print(f"wrote {args.out} (model card, weights, tokenizer{steps})")
    if args.push_to_hub is not None:
        try:
            url = push_folder(args.out, args.push_to_hub, private=args.private)
        except Exception as e:  # huggingface_hub raises HTTP, network and auth errors of many kinds
            print(
                f"error: --push-to-hub {args.push_to_hub}: {type(e).__name__}: {e}".splitlines()[0],
                file=sys.stderr,
            )
            return 1
        print(f"pushed to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
