"""sonotext models on the Hugging Face hub: the registered config, where a saved model is found, publishing one.

A saved model folder (``AudioTextModel.save_pretrained``) is hub-ready: ``config.json`` (model_type "sonotext",
registered with AutoConfig/AutoModel when ``trainer.model`` is imported), ``model.safetensors``, the tokenizer,
``preprocessor_config.json`` (the raw-waveform input: sample rate, padding, mask), the towers' configs and
front-end settings (``audio_backbone/``, ``text_backbone/``) and a model card ``README.md``.

`locate` turns what a user names into that folder: a saved model folder, a training checkpoint
(RUN/checkpoints/step_N or latest, through trainer.checkpoint.model_dir), or a hub id ORG/NAME, fetched with
huggingface_hub into its cache (HF_HOME / HF_HUB_CACHE); with HF_HUB_OFFLINE=1 a cached snapshot is used
without any network access.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from trainer.checkpoint import CheckpointError

MODEL_TYPE = "sonotext"
FORMAT = "sonotext-audio-text"
FORMAT_VERSION = 2
"""1: config.json without model_type, tokenizer in tokenizer/, linear heads only. 2: model_type, heads, card."""
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PREPROCESSOR_NAME = "preprocessor_config.json"
LEGACY_TOKENIZER_DIR = "tokenizer"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """No saved model under that name: neither a local folder nor a hub id that can be fetched (or is cached)."""


class SonotextConfig(PretrainedConfig):
    """config.json of a saved AudioTextModel (what AutoConfig returns for model_type "sonotext")."""

    model_type = MODEL_TYPE
    format: str = FORMAT
    version: int = FORMAT_VERSION
    model: dict | None = None
    """trainer.config.ModelConfig as a dict (towers, embed_dim)."""
    sample_rate: int | None = None
    """The rate (Hz) the model takes audio at."""
    init_logit_scale: float | None = None
    max_logit_scale: float | None = None
    text_pooling: str | None = None
    heads: dict | None = None
    """{"audio": HeadSpec, "text": HeadSpec} as dicts; absent in version 1 (linear heads)."""
    caption_transform: str = "none"
    """Normalisation of every text before tokenising (data.caption_transform of the training run)."""


def is_hub_id(name: str) -> bool:
    """ORG/NAME as the hub spells repository ids (not a relative path such as ./x or runs/a/b)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def locate(
    name_or_path: str | Path,
    what: str = "model",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The saved-model folder that `name_or_path` names: a local folder or checkpoint, else a hub id (cached).

    `what` names the argument in errors (e.g. "--checkpoint", "train.init_from").
    """
    from trainer.checkpoint import model_dir

    path = Path(name_or_path)
    if path.exists():
        return model_dir(path, what)
    if not is_hub_id(str(name_or_path)):
        raise ModelNotFoundError(f"{what} {name_or_path}: not a directory (and not a hub id ORG/NAME)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"{what} {name_or_path}: no such local folder, and not available as a hub id: {reason}"
        ) from None
    return model_dir(folder, what)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a saved-model folder to the hub repository `repo_id` (created if missing); returns the commit URL.

    Needs network access and a token with write access (`hf auth login` or HF_TOKEN).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload sonotext model")
    return str(getattr(info, "commit_url", info))


def hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Split what `from_pretrained` takes from AutoModel: hub options are returned, bookkeeping is dropped, and
    anything else is an error naming it."""
    hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
    for ignored in ("config", "trust_remote_code", "adapter_kwargs"):
        kwargs.pop(ignored, None)
    for name in [k for k in kwargs if k.startswith("_")]:
        kwargs.pop(name)
    if kwargs:
        raise TypeError(f"from_pretrained: unexpected arguments {sorted(kwargs)}")
    return hub
