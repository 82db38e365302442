"""The model card (README.md) of a saved model: towers, training data mixture and progress, last evaluation, usage.

`model_card` is a pure function of plain dicts: `describe` (what the model says about itself) and `training` (what
its checkpoint says about the run: trainer.checkpoint.training_summary), so a card can be written wherever both are
known and tested on hand-made values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _value(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.4f}"
    return str(x)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _towers(model: Mapping[str, Any]) -> list[str]:
    cfg = model["model"]
    audio, text = cfg["audio"], cfg["text"]
    heads = model.get("heads") or {}
    head = heads.get("audio", {}).get("kind", "linear")
    if head == "mlp":
        head = f"MLP (linear-{heads['audio'].get('activation')}-linear)"
    scale = f"logit scale {model['logit_scale']:.4g}" if model.get("logit_scale") is not None else ""
    lines = [
        "| part | backbone | initialised from | details |",
        "|---|---|---|---|",
        f"| audio | `{audio['name']}` | {audio.get('pretrained') or 'random init'} | input {model['sample_rate']} Hz mono, "
        f"frames at {model['frame_rate']:.4g} per second |",
        f"| text | `{text['name']}` | {text.get('pretrained') or 'random init'} | pooling `{model['text_pooling']}`, "
        f"max {text['max_length']} tokens |",
        f"| joint space | {model['embed_dim']}-d, L2-normalised | projection heads: {head} | {scale} |",
    ]
    return lines


def _training(training: Mapping[str, Any]) -> list[str]:
    lines = ["## Training", ""]
    step = training.get("step")
    seen = training.get("samples_seen")
    lines.append(
        f"{step} optimizer steps" + (f", {seen} samples seen (all ranks)." if seen is not None else ".")
    )
    mixture = training.get("mixture") or {}
    data_seen = training.get("data_seen") or {}
    rows = [
        (kind, src.get("name", ""), src.get("weight", 1.0), src.get("urls", ""))
        for kind in ("weak", "strong")
        for src in mixture.get(kind) or []
    ]
    if rows:
        lines += ["", "| kind | source | weight | samples seen | shards |", "|---|---|---|---|---|"]
        for kind, name, weight, urls in rows:
            urls = ", ".join(urls) if isinstance(urls, list) else urls
            lines.append(f"| {kind} | {name} | {weight} | {data_seen.get(name, 0)} | `{urls}` |")
        if mixture.get("strong"):
            if mixture.get("strong_prob") is not None:
                lines.append(
                    f"\nEach batch is strong (time-aligned captions) with probability {mixture['strong_prob']}."
                )
            elif mixture.get("strong_every"):
                lines.append(
                    f"\nEvery {_ordinal(int(mixture['strong_every']))} batch is strong (time-aligned captions)."
                )
    return lines


def _evaluation(report: Mapping[str, Any]) -> list[str]:
    lines = ["## Evaluation", "", f"Last evaluation during training, at step {report.get('step')}:", ""]
    lines += ["| set | metric | value |", "|---|---|---|"]
    for key in sorted(k for k in report if k != "step"):
        value = report[key]
        if not isinstance(value, (int, float)):
            continue
        name, _, metric = key.rpartition("/")
        lines.append(f"| {name or '-'} | {metric} | {_value(value)} |")
    return lines


def model_card(
    describe: Mapping[str, Any], training: Mapping[str, Any] | None = None, name: str = "PATH"
) -> str:
    """README.md text: hub metadata, towers, training mixture and samples seen, last evaluation, how to load.

    `name` is how users refer to the model in the usage examples (a hub id or a folder).
    """
    training = training or {}
    lines = [
        "---",
        "library_name: sonotext",
        "pipeline_tag: zero-shot-audio-classification",
        "tags:",
        *(f"- {t}" for t in ("audio", "audio-text", "clap", "contrastive", "sonotext")),
        "---",
        "",
        f"# {name}",
        "",
        "An audio-text embedding model (CLAP-style) trained with sonotext: clip-level contrastive learning on captioned",
        "audio, plus frame-level alignment on time-aligned captions when the mixture has strong sources. Audio and",
        "text map into one space; frame embeddings share it, so a caption can be scored against every moment of a clip.",
        "",
        "## Towers",
        "",
        *_towers(describe),
        "",
    ]
    if training.get("step") is not None:
        lines += [*_training(training), ""]
    if training.get("eval"):
        lines += [*_evaluation(training["eval"]), ""]
    rate = describe["sample_rate"]
    lines += [
        "## How to load",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModel",
        "",
        "import trainer.model  # registers model_type 'sonotext' with AutoConfig/AutoModel",
        "from trainer.model import AudioTextModel",
        "",
        f'model = AudioTextModel.from_pretrained("{name}")  # or AutoModel.from_pretrained("{name}")',
        'audio = model.embed_audio(["dog.wav", "rain.flac"])       # files at any sample rate -> [2, D]',
        f"audio = model.embed_audio(torch.randn(2, {rate}), sample_rate={rate})  # waveforms [B, N]",
        'text = model.embed_text(["a dog barks", "rain on a roof"])  # [2, D]',
        "similarity = audio @ text.T",
        'scores = model.frame_scores("street.wav", texts=["a car horn"])  # similarity over time',
        "```",
        "",
        "From the command line (with the sonotext package installed):",
        "",
        "```bash",
        f"python -m tools.embed --checkpoint {name} --audio-dir clips/ --out emb.npy",
        f"python -m tools.zeroshot --checkpoint {name} --audio-dir ESC-50/audio --labels ESC-50/meta/esc50.csv",
        "```",
        "",
    ]
    return "\n".join(lines)
