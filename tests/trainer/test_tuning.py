"""What a run trains: tower locking per backend (open_clip's lock_*_tower), a fixed logit scale, SpecAugment in the
front end (training only), the optimizer without frozen parameters, real train steps that leave frozen weights alone."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer.test_model import CAPTIONS, batch, tiny_config
from trainer.config import ConfigError, LossConfig, SpecAugmentConfig, load_config
from trainer.model import build_model
from trainer.model.frontend import LogMel, SpecAugment, draw_stripes, stripe_mask
from trainer.model.tuning import lock_tower, prepare_for_training, set_spec_augment, towers
from trainer.optim import build_optimizer

# The parameters of each backbone that stay trainable with `freeze: 1` (2 layers): the last layer and what runs after
# the stack. HTSAT's input BatchNorm (audio_encoder.batch_norm) is registered after its stages but runs first.
LAST_LAYER = {
    "conv": ("blocks.1.", "norm."),
    "ast": ("layers.1.", "layernorm."),
    "clap_htsat": ("audio_encoder.layers.1.", "audio_encoder.norm."),
    "whisper": ("layers.1.", "layer_norm."),
    "wav2vec2": ("encoder.layers.1.", "encoder.layer_norm."),  # the stable-layer-norm variant: final norm
    "hubert": ("encoder.layers.1.", "encoder.layer_norm."),
    "tiny": ("encoder.layer.1.",),  # mean pooling: no pooler
    "roberta": ("encoder.layer.1.",),
    "clap": ("encoder.layer.1.", "pooler."),
}


def model_of(audio: str = "conv", text: str = "tiny", layers: int = 2):
    cfg = tiny_config(audio, text)
    cfg.audio.num_layers = cfg.text.num_layers = layers
    torch.manual_seed(0)
    return build_model(cfg, LossConfig(), sample_rate=16000, tokenizer_texts=CAPTIONS)


def trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("audio", "text"),
    [
        ("conv", "tiny"),
        ("ast", "roberta"),
        ("clap_htsat", "clap"),
        ("whisper", "tiny"),
        ("wav2vec2", "tiny"),
        ("hubert", "tiny"),
    ],
)
def test_lock_all_but_the_last_layer_per_backend(audio, text):
    model = model_of(audio, text)
    parts = towers(model)
    for side, name in (("audio", audio), ("text", text)):
        tower, backbone = parts[side]
        everything = {n for n, _ in backbone.named_parameters()}
        frozen = lock_tower(tower, backbone, 1, f"model.{side}.freeze")
        expected = {n for n in everything if n.startswith(LAST_LAYER[name])}
        assert expected and trainable(backbone) == expected, side
        assert trainable(tower) == {n for n in trainable(tower) if any(k in n for k in LAST_LAYER[name])}
        assert frozen == sum(p.numel() for p in tower.parameters() if not p.requires_grad) > 0
    if audio == "clap_htsat":
        assert not model.audio_encoder.backend.model.audio_encoder.batch_norm.weight.requires_grad


def test_lock_counts_embeddings_as_the_first_group_and_true_locks_everything():
    def locked(freeze):
        model = model_of()
        tower, backbone = towers(model)["audio"]
        lock_tower(tower, backbone, freeze, "model.audio.freeze")
        return trainable(backbone), model

    assert locked(2)[0] == {n for n in locked(False)[0] if n.startswith(("blocks.", "norm."))}
    assert locked(3)[0] == locked(False)[0]  # 2 layers + the front end: nothing left to freeze
    names, model = locked(True)
    assert names == set() and trainable(model) >= {"audio_proj.weight", "text_proj.weight", "log_logit_scale"}
    with pytest.raises(
        ConfigError, match=r"model\.audio\.freeze: 4 trainable layers asked, but ConvBackend has 2"
    ):
        locked(4)


def test_frozen_parameters_are_not_optimized_and_do_not_move():
    from trainer.distributed import build_accelerator
    from trainer.step import train_step

    cfg = load_config(
        None,
        [
            "model.audio.freeze=1",
            "model.text.freeze=true",
            "loss.learn_logit_scale=false",
            "loss.init_logit_scale=20",
            "data.strong_every=0",
            "wandb.mode=disabled",
            "optim.weight_decay=0.1",
        ],
    )
    model = model_of()
    with torch.no_grad():
        model.log_logit_scale.fill_(0.0)  # a loaded model's scale: a fresh run resets a fixed one to init
    counts = prepare_for_training(model, cfg, fresh=True)
    assert model.logit_scale().item() == pytest.approx(20.0)
    params = dict(model.named_parameters())
    moving = {n for n, p in params.items() if p.requires_grad}
    assert moving == {
        n for n in params if n.startswith(("audio_encoder.backend.blocks.1.", "audio_encoder.backend.norm."))
    } | {
        "audio_proj.weight",
        "audio_proj.bias",
        "text_proj.weight",
        "text_proj.bias",
    }
    assert counts == {
        "trainable": sum(params[n].numel() for n in moving),
        "frozen": sum(p.numel() for n, p in params.items() if n not in moving),
    }
    optimizer = build_optimizer(model, cfg.optim)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(params[n]) for n in moving}

    accelerator = build_accelerator(cfg)
    before = {n: p.detach().clone() for n, p in params.items()}
    model, optimizer = accelerator.prepare(model, optimizer)
    audio, mask = batch()
    weak = {"kind": "weak", "audio": audio, "audio_mask": mask, "captions": CAPTIONS[:2]}
    for _ in range(2):
        train_step(accelerator, model, optimizer, model.tokenize, weak, cfg)
    after = dict(accelerator.unwrap_model(model).named_parameters())
    for name, value in before.items():
        assert torch.equal(after[name].detach(), value) == (name not in moving), name


def test_resumed_fixed_logit_scale_stays_where_it_was():
    cfg = load_config(
        None, ["loss.learn_logit_scale=false", "loss.init_logit_scale=20", "data.strong_every=0"]
    )
    model = model_of()
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(5.0))
    prepare_for_training(model, cfg, fresh=False)
    assert model.logit_scale().item() == pytest.approx(5.0) and not model.log_logit_scale.requires_grad


# ---------------------------------------------------------------------------------------------------------------------
# SpecAugment
# ---------------------------------------------------------------------------------------------------------------------


def test_stripe_mask_hand_computed():
    starts = torch.tensor([[1, 6], [0, 0]])
    widths = torch.tensor([[2, 0], [3, 1]])
    expected = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(stripe_mask(8, starts, widths), expected)


def test_stripes_fit_and_cover_every_width():
    torch.manual_seed(0)
    starts, widths = draw_stripes(4000, 2, 5, 12, torch.device("cpu"))
    assert set(widths.flatten().tolist()) == {0, 1, 2, 3, 4}
    assert (starts >= 0).all() and (starts + widths <= 12).all()
    assert set(starts[widths == 4].tolist()) == set(range(9))  # every start where a width-4 stripe fits


def test_spec_augment_masks_stripes_with_the_clip_mean():
    torch.manual_seed(1)
    features = torch.randn(3, 50, 16)
    out = SpecAugment(time_masks=2, time_width=0.2, freq_masks=1, freq_width=5)(features, frame_rate=100.0)
    changed = out != features
    for clip in range(3):
        mean = features[clip].mean()
        assert torch.allclose(out[clip][changed[clip]], mean.expand(int(changed[clip].sum())))
        rows = changed[clip].all(dim=1)  # masked frames (time stripes: < 20 frames each, two of them)
        cols = changed[clip].all(dim=0)  # masked bins (one stripe < 5 bins)
        assert int(rows.sum()) <= 2 * 19 and int(cols.sum()) <= 4
        assert torch.equal(changed[clip], rows[:, None] | cols[None, :])


def test_spec_augment_in_the_front_end_only_in_training():
    model = model_of()
    audio, mask = batch()
    tokens = model.tokenize(CAPTIONS[:2])
    model.eval()
    plain = model(audio, mask, **tokens).audio_clip
    set_spec_augment(model, SpecAugmentConfig(time_masks=2, time_width=0.1, freq_masks=2, freq_width=8))
    (front,) = [m for m in model.modules() if isinstance(m, LogMel)]
    assert isinstance(front.augment, SpecAugment)
    assert torch.equal(model(audio, mask, **tokens).audio_clip, plain)  # eval: never masked
    model.train()
    torch.manual_seed(0)
    features = front(audio)
    model.eval()
    assert not torch.equal(features, front(audio))
    assert model.state_dict().keys() == model_of().state_dict().keys()  # nothing saved with the model
    set_spec_augment(model, SpecAugmentConfig())
    assert front.augment is None


def test_spec_augment_needs_a_mel_front_end():
    with pytest.raises(
        ConfigError, match=r"data\.spec_augment: the wav2vec2 audio tower has no mel front end"
    ):
        set_spec_augment(model_of("wav2vec2"), SpecAugmentConfig(time_masks=1, time_width=0.1))
