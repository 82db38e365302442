"""Audio and text towers, projection heads and the joint model (see joint.py)."""

from trainer.model.joint import AudioTextModel, ModelOutput, build_model

__all__ = ["AudioTextModel", "ModelOutput", "build_model"]
