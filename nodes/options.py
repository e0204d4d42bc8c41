"""Option keys that several node programs share: which network they train or embed with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta

from dsim.options import Options

ModelPreset = Literal["convnet", "convnet_bn", "convnet_nn"]
"""The presets of dsim.ml.models.MODEL_PRESETS (a test keeps the two equal without importing torch here)."""


class ModelOptions(Options):
    """The model keys of a program table."""

    model: Annotated[ModelPreset, Meta(description="network preset: convnet (ConvNet-3, instance norm), convnet_bn, convnet_nn")] = "convnet"
    width: Annotated[int, Meta(ge=0, description="conv channels; 0 keeps the preset's 128")] = 0

    @property
    def model_spec(self) -> Any:
        """What dsim.ml.models.build_model takes: the preset, with `width` overriding its channels."""
        return {"name": self.model, "width": self.width} if self.width > 0 else self.model
