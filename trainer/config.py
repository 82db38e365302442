"""Training configuration: dataclasses (the reference), YAML loading and dot-list overrides, cross-field checks.

    cfg = load_config("configs/debug.yaml", ["optim.lr=1e-4", "data.weak.0.weight=2"])

Every field carries a one-line docstring; that docstring is the documentation of the key.
Unknown keys and wrong types are errors that name the full key, e.g. ``optim.lr: expected float, got 'fast'``
(checked by trainer.configparse, which also applies the overrides).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.configparse import ConfigError, apply_override, from_dict

# ---------------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    name: str = "debug"
    """Run name; also the default output folder name and the wandb run name."""
    output_dir: str | None = None
    """Where config.yaml, metrics.jsonl, eval/ and checkpoints/ go. Default: runs/NAME."""
    seed: int = 0
    """Seed for model init, data order and every RNG; ranks and workers derive their own from it."""


@dataclass
class SourceConfig:
    name: str = ""
    """Source name, used in logs (metrics.jsonl data_seen) and data-stream state."""
    urls: str | list[str] = ""
    """Shard urls: a split folder, a brace pattern (shards/x/train/x-train-{000000..000009}.tar), or a list; local, http(s)://, s3://, gs:// or hf://."""
    weight: float = 1.0
    """Relative sampling weight among the sources of the same kind (weak or strong); must be > 0."""


@dataclass
class MixupConfig:
    prob: float = 0.0
    """Probability that a clip of a weak training batch is mixed (0: off). A mixed clip i becomes
    λ·clip_i + (1-λ)·clip_j with j its mirror in the batch (LAION-CLAP's do_mixup pairs i with B-1-i), its caption
    "caption_i and caption_j"; strong batches and evaluation are never mixed."""
    alpha: float = 0.5
    """λ ~ Beta(alpha, alpha), drawn per mixed clip (LAION-CLAP's get_mix_lambda uses 0.5)."""


@dataclass
class SpecAugmentConfig:
    time_masks: int = 0
    """Time masks per clip on the model's (log-)mel front end, in training only (0: none)."""
    time_width: float = 0.0
    """Largest width of a time mask in seconds; each width is uniform in [0, time_width)."""
    freq_masks: int = 0
    """Frequency masks per clip (0: none)."""
    freq_width: int = 0
    """Largest width of a frequency mask in mel bins; each width is uniform in {0, ..., freq_width - 1}."""


@dataclass
class DataConfig:
    sample_rate: int = 32000
    """Sample rate the model sees; shards at another rate are resampled on the fly."""
    clip_seconds: float = 10.0
    """Length of the training window: longer clips are cropped, shorter are padded with a mask."""
    batch_size: int = 32
    """Per-process batch size (global batch = batch_size x world size x grad_accum)."""
    num_workers: int = 2
    """DataLoader worker processes per training process."""
    weak: list[SourceConfig] = field(default_factory=list)
    """Clip-caption sources (captions describe the whole clip)."""
    strong: list[SourceConfig] = field(default_factory=list)
    """Time-aligned sources (region captions with onset/offset)."""
    strong_every: int = 2
    """Every k-th batch is a strong batch (0: weak only). Ignored when strong_prob is set."""
    strong_prob: float | None = None
    """If set, each batch is strong with this probability instead of the fixed strong_every pattern."""
    shuffle_buffer: int = 1000
    """Samples held in the per-worker shuffle buffer (training only)."""
    min_region_overlap: float = 0.5
    """A strong region cut by the crop window is kept only if at least this fraction of it stays inside."""
    caption_transform: Literal["none", "lower_strip_punct", "lower_strip_punct_trim"] = "none"
    """Text normalisation before tokenising, the same in training, evaluation and region-caption de-duplication
    (saved with the model): lower_strip_punct = lower case, ASCII punctuation removed (the DCASE 2025 baseline);
    lower_strip_punct_trim = that, then outer whitespace stripped (TACOS)."""
    caption_sampling: Literal["random", "all"] = "random"
    """random: sources are read as resampled shards, one random caption per weak clip; all: sources are read in
    passes, each pass yields every (clip, caption) pair of a weak source (every clip of a strong one) exactly once."""
    mixup: MixupConfig = field(default_factory=MixupConfig)
    """Mixup of weak training clips (waveforms mixed in the data workers, captions joined)."""
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    """SpecAugment time/frequency masking in the audio tower's mel front end, training only."""
    allow_pipe: bool = False
    """Accept `pipe:` shard urls (they run shell commands); off unless you trust the config."""
    retries: int = 5
    """Retries of a failed or stalled network read (http(s), s3, gs, hf) of one shard, each resuming at the byte reached; then training skips the shard, evaluation stops."""
    timeout_s: float = 60.0
    """Seconds an http(s) read may wait for data before it counts as stalled and is retried (object stores: their client's timeouts)."""
    retry_backoff_s: float = 1.0
    """Wait before the first retry of a network read; doubled for each further one (at most 30 s), with jitter."""
    max_text_chars: int = 2000
    """Captions and region texts read from shards are cut to this many characters (as the converters do; counted
    as `truncated`), so that one huge text cannot exhaust memory in the tokenizer or the tokenizer training."""


@dataclass
class AudioModelConfig:
    name: Literal["conv", "ast", "clap_htsat", "whisper", "wav2vec2", "hubert"] = "conv"
    """Audio encoder backend; 'conv' is a tiny encoder for tests and the demo."""
    pretrained: str | None = None
    """null: random init from the size fields below; a local path or hub id: load real weights."""
    hidden_size: int = 64
    """Width of the encoder (random-init only)."""
    num_layers: int = 2
    """Number of layers/blocks (random-init only)."""
    num_heads: int = 4
    """Attention heads (random-init transformer backends only)."""
    n_mels: int = 64
    """Mel bins of the front end (random-init backends that take spectrograms)."""
    frame_rate: float = 25.0
    """Target output frame rate in Hz for the conv encoder (others derive it from their own hop/patching)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra keys set on the transformers config of the backend (checked: must be existing attributes)."""
    freeze: bool | int = False
    """Lock the tower (open_clip's lock_image): true freezes all of it, N >= 1 all but its last N layers (the front
    end/embeddings count as the first layer; final norms and poolers stay trainable); its projection head trains."""


@dataclass
class TextModelConfig:
    name: Literal["tiny", "bert", "roberta", "clap", "auto"] = "tiny"
    """Text encoder backend; 'auto' uses AutoModel on `pretrained`, 'tiny' a small random BERT."""
    pretrained: str | None = None
    """null: random init + a tokenizer trained offline; a local path or hub id: load real weights."""
    max_length: int = 32
    """Captions are truncated to this many tokens."""
    hidden_size: int = 64
    """Width (random-init only)."""
    num_layers: int = 2
    """Layers (random-init only)."""
    num_heads: int = 4
    """Attention heads (random-init only)."""
    vocab_size: int = 2000
    """Vocabulary size of the tokenizer trained offline (random-init only)."""
    pooling: Literal["cls", "mean", "pooler"] | None = None
    """Caption vector: null = the backend's own (mean for tiny, pooler for clap, sentence-transformers' setting, else cls)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra keys set on the transformers config (checked: must be existing attributes)."""
    freeze: bool | int = False
    """Lock the tower (open_clip's lock_text): true freezes all of it, N >= 1 all but its last N layers (the
    embeddings count as the first layer; a pooler stays trainable); its projection head trains."""


@dataclass
class ModelConfig:
    audio: AudioModelConfig = field(default_factory=AudioModelConfig)
    """Audio tower."""
    text: TextModelConfig = field(default_factory=TextModelConfig)
    """Text tower."""
    embed_dim: int | None = None
    """Dimension of the joint embedding space (projection heads output, L2-normalised). null: 64 for new heads, the
    checkpoint's own with kept heads (keep_heads); a number must then equal it."""
    keep_heads: bool = True
    """When both towers come from one checkpoint that ships projection heads and a logit scale (a full CLAP model:
    audio_projection, text_projection, logit_scale_a), start from them instead of new random heads and
    loss.init_logit_scale, so that step 0 scores exactly as that checkpoint does."""


@dataclass
class LossConfig:
    weak_weight: float = 1.0
    """Weight of the clip-level InfoNCE on weak batches."""
    strong_weight: float = 1.0
    """Weight of the frame-level region contrastive loss on strong batches."""
    strong_tau: float = 0.1
    """Temperature of the region loss (frame-text similarities are divided by it)."""
    temporal_weight: float = 0.0
    """Weight of the optional temporal-order (DTU) margin term; 0 disables it."""
    init_logit_scale: float = 1 / 0.07
    """Initial clip-loss logit scale as the multiplier 1/τ (stored as its log; clamped at max_logit_scale)."""
    max_logit_scale: float = 100.0
    """Upper clamp of the learnable logit scale multiplier (CLIP uses 100)."""
    learn_logit_scale: bool = True
    """false: τ of the clip loss is fixed at 1/init_logit_scale (DCASE/TACOS tau_trainable false; also reset to it
    when starting from train.init_from). strong_tau is always fixed, as in TACOS."""
    duplicate_audio: Literal["negative", "mask", "positive"] = "mask"
    """The same clip twice in a weak batch (two captions of it): mask = not negatives of each other; negative =
    ordinary negatives (TACOS); positive = extra positives, every same-audio pair in both directions (DCASE 2025)."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to norms, biases and the logit scale)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many optimizer steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After warmup: cosine decay to min_lr_ratio·lr at max_steps, or constant."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule as a fraction of lr."""


@dataclass
class TrainConfig:
    max_steps: int = 100
    """Optimizer steps to train for."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision."""
    grad_checkpointing: bool = False
    """Recompute activations in backward for both towers (less memory, more compute)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping, norm still logged)."""
    log_every: int = 10
    """Write metrics.jsonl / wandb every N optimizer steps and at the last one (0 disables)."""
    eval_every: int = 0
    """Evaluate every N optimizer steps and at the end (0 disables)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Keep this many most recent checkpoints (0 keeps all)."""
    resume: str | None = "auto"
    """null: start fresh; auto: resume from the newest checkpoint in output_dir/checkpoints that verifies (a damaged
    one is reported and the next older is tried; an error if checkpoints exist but none is usable), a fresh start
    when there is none; or a checkpoint path (it must verify)."""
    nan_patience: int = 0
    """Optimizer steps in a row with a non-finite loss or gradient norm that are skipped (no update) before the run
    stops with an error naming the step and the batch's sources; 0: stop at the first."""
    init_from: str | None = None
    """Start a new run from these weights: a checkpoint (RUN/checkpoints/step_N, its model/) or a saved model folder;
    optimizer, schedule, step and data start fresh and the model section of this config is not used. Ignored when
    resuming (e.g. TACOS fine-tuning from a weak pre-training run)."""
    deepspeed: str | None = None
    """null: DDP through Accelerate; or a DeepSpeed JSON with `auto` values: a path or a shipped name
    (configs/deepspeed/zeroN.json, or zeroN)."""
    compile: bool = False
    """torch.compile both towers in place (nn.Module.compile: saved weights keep their names)."""


@dataclass
class EvalSetConfig:
    name: str = ""
    """Name of the evaluation set (report keys are NAME/metric)."""
    urls: str | list[str] = ""
    """Shard urls of a finite evaluation split (split folder, brace pattern or list; local or remote like data urls)."""
    max_samples: int | None = None
    """Evaluate on at most this many samples (null: all)."""


@dataclass
class EvalConfig:
    retrieval: list[EvalSetConfig] = field(default_factory=list)
    """Sets for text↔audio retrieval (R@k, mAP@10)."""
    temporal: list[EvalSetConfig] = field(default_factory=list)
    """Strong sets for temporal alignment (frame AUROC/AP, PSDS1, pAUROC)."""
    batch_size: int = 32
    """Per-process batch size for embedding computation."""
    allow_partial: bool = False
    """Report on the samples that could be read when an evaluation set has corrupt samples or shards (counted as
    SET/skipped); false: such an evaluation is an error that stops the run."""


@dataclass
class WandbConfig:
    project: str = "sonotext"
    """wandb project."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """offline writes under output_dir/wandb; online needs a login; disabled turns it off."""
    entity: str | None = None
    """wandb entity (team); null uses the default."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Run identity, output folder and seed."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard sources, mixing and per-sample processing."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Audio/text towers and the joint space."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and temperatures."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Step loop, precision, checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation sets run every train.eval_every steps."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Experiment tracking."""

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir or Path("runs") / self.run.name)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """YAML file (or None for the defaults) + dot-list overrides -> validated Config."""
    from trainer.config_files import resolve_config_file  # imports ConfigError from here

    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_file(path, folders=("", "experiments"))
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(Config, raw)
    if cfg.train.deepspeed:  # a path, or a shipped name such as configs/deepspeed/zero2.json
        ds = resolve_config_file(cfg.train.deepspeed, folders=("deepspeed", ""), what="train.deepspeed: file")
        cfg.train.deepspeed = str(ds)
    validate(cfg)
    return cfg


MIN_SAMPLE_RATE = 1000
"""Hz; below it no audio front end makes sense (and mel filterbanks break)."""
MIN_CLIP_SECONDS = 0.1
"""Seconds; every audio front end needs at least one analysis window (tens of milliseconds) per clip."""


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    positive = {
        "data.sample_rate": cfg.data.sample_rate,
        "data.clip_seconds": cfg.data.clip_seconds,
        "data.batch_size": cfg.data.batch_size,
        "data.max_text_chars": cfg.data.max_text_chars,
        "model.text.max_length": cfg.model.text.max_length,
        "loss.strong_tau": cfg.loss.strong_tau,
        "loss.init_logit_scale": cfg.loss.init_logit_scale,
        "loss.max_logit_scale": cfg.loss.max_logit_scale,
        "optim.lr": cfg.optim.lr,
        "train.max_steps": cfg.train.max_steps,
        "train.grad_accum": cfg.train.grad_accum,
        "eval.batch_size": cfg.eval.batch_size,
    }
    if cfg.model.embed_dim is not None:
        positive["model.embed_dim"] = cfg.model.embed_dim
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "data.strong_every": cfg.data.strong_every,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "loss.weak_weight": cfg.loss.weak_weight,
        "loss.strong_weight": cfg.loss.strong_weight,
        "loss.temporal_weight": cfg.loss.temporal_weight,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "train.grad_clip": cfg.train.grad_clip,
        "train.log_every": cfg.train.log_every,
        "train.eval_every": cfg.train.eval_every,
        "train.save_every": cfg.train.save_every,
        "train.keep_last": cfg.train.keep_last,
        "data.retries": cfg.data.retries,
        "data.retry_backoff_s": cfg.data.retry_backoff_s,
        "data.spec_augment.time_masks": cfg.data.spec_augment.time_masks,
        "data.spec_augment.time_width": cfg.data.spec_augment.time_width,
        "data.spec_augment.freq_masks": cfg.data.spec_augment.freq_masks,
        "data.spec_augment.freq_width": cfg.data.spec_augment.freq_width,
        "train.nan_patience": cfg.train.nan_patience,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value!r}")
    if not cfg.data.timeout_s > 0:
        raise ConfigError(f"data.timeout_s: must be > 0, got {cfg.data.timeout_s!r}")
    if cfg.data.sample_rate < MIN_SAMPLE_RATE:
        raise ConfigError(
            f"data.sample_rate: {cfg.data.sample_rate} Hz is too low for audio; must be >= {MIN_SAMPLE_RATE}"
        )
    if cfg.data.clip_seconds < MIN_CLIP_SECONDS:
        raise ConfigError(
            f"data.clip_seconds: {cfg.data.clip_seconds} s is shorter than an audio front end's analysis window; "
            f"must be >= {MIN_CLIP_SECONDS}"
        )
    if not 0.0 <= cfg.data.min_region_overlap <= 1.0:
        raise ConfigError(f"data.min_region_overlap: must be in [0, 1], got {cfg.data.min_region_overlap!r}")
    if cfg.data.strong_prob is not None and not 0.0 <= cfg.data.strong_prob <= 1.0:
        raise ConfigError(f"data.strong_prob: must be in [0, 1], got {cfg.data.strong_prob!r}")
    if not 0.0 <= cfg.data.mixup.prob <= 1.0:
        raise ConfigError(f"data.mixup.prob: must be in [0, 1], got {cfg.data.mixup.prob!r}")
    if cfg.data.mixup.alpha <= 0:
        raise ConfigError(f"data.mixup.alpha: must be > 0, got {cfg.data.mixup.alpha!r}")
    for tower in ("audio", "text"):
        freeze = getattr(cfg.model, tower).freeze
        if not isinstance(freeze, bool) and freeze < 1:
            raise ConfigError(
                f"model.{tower}.freeze: expected true, false or a number of trainable last layers >= 1, got {freeze!r}"
            )
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1], got {cfg.optim.min_lr_ratio!r}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {cfg.optim.betas!r}")
    if cfg.loss.init_logit_scale > cfg.loss.max_logit_scale:
        raise ConfigError(
            f"loss.init_logit_scale: {cfg.loss.init_logit_scale} exceeds loss.max_logit_scale {cfg.loss.max_logit_scale}"
        )
    for kind in ("weak", "strong"):
        sources: list[SourceConfig] = getattr(cfg.data, kind)
        seen: set[str] = set()
        for i, src in enumerate(sources):
            key = f"data.{kind}.{i}"
            if not src.name:
                raise ConfigError(f"{key}.name: must be a non-empty string")
            if src.name in seen:
                raise ConfigError(f"{key}.name: duplicate source name {src.name!r}")
            seen.add(src.name)
            if not src.urls:
                raise ConfigError(f"{key}.urls: must name at least one shard")
            if not (src.weight > 0):
                raise ConfigError(f"{key}.weight: must be > 0, got {src.weight!r}")
    names = [s.name for s in cfg.data.weak] + [s.name for s in cfg.data.strong]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"data: source name {sorted(dup)[0]!r} is used by both weak and strong sources")
    wants_strong = cfg.data.strong_prob > 0 if cfg.data.strong_prob is not None else cfg.data.strong_every > 0
    if cfg.data.strong and not wants_strong:
        raise ConfigError(
            "data.strong: sources are configured but no batch would be strong (strong_every/strong_prob)"
        )
    if wants_strong and cfg.data.weak and not cfg.data.strong:
        raise ConfigError(
            "data.strong_every: strong batches requested but data.strong has no sources (set it to 0)"
        )
    all_strong = (
        cfg.data.strong_prob == 1.0 if cfg.data.strong_prob is not None else cfg.data.strong_every == 1
    )
    if cfg.data.strong and not cfg.data.weak and not all_strong:
        raise ConfigError("data.weak: no weak sources; set data.strong_every=1 for a strong-only run")
    if all_strong and cfg.data.weak:
        key = "data.strong_prob=1" if cfg.data.strong_prob is not None else "data.strong_every=1"
        names = ", ".join(s.name for s in cfg.data.weak)
        raise ConfigError(
            f"{key} makes every batch strong, so the weak sources ({names}) would never be read; "
            "remove them (data.weak=[]) or make room for weak batches"
        )
    for kind in ("retrieval", "temporal"):
        for i, s in enumerate(getattr(cfg.eval, kind)):
            if not s.name or not s.urls:
                raise ConfigError(f"eval.{kind}.{i}: needs a name and urls")
            if s.max_samples is not None and s.max_samples <= 0:
                raise ConfigError(f"eval.{kind}.{i}.max_samples: must be > 0 or null, got {s.max_samples}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain dict of a Config (for config.yaml, wandb and checkpoints)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
