"""A model spec: one network, one set of weights and the exact preprocessing those weights expect."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from c3d_extract.errors import UsageError
from c3d_extract.models.net import StagedNet
from c3d_extract.models.preprocess import InputSpec


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` selects: a network builder, its input spec, default layers and weights name."""

    name: str                    # e.g. "c3d-sports1m": the weights it matches and their preprocessing
    model: str                   # the network family, e.g. "c3d"
    build: Callable[..., StagedNet]  # keyword num_classes
    input: InputSpec
    default_layers: tuple[str, ...]
    weights_name: str            # file stem of installed weights, e.g. "c3d-sports1m.pt"
    description: str
    classifier: str = "fc8"      # the last fully connected stage: its width is the class count

    def with_input(self, **changes) -> "ModelSpec":
        """A copy with some input settings changed (clip length, stride, mean, ...)."""
        return replace(self, input=replace(self.input, **changes))

    def layer_shapes(self, layers: list[str], num_classes: int | None = None,
                     net: StagedNet | None = None) -> dict[str, tuple[int, ...]]:
        """Per-clip output shape of each layer, from a forward pass of an empty batch (no clip: the
        operators check and compute shapes only, cheap with a built `net`). Without `net` the
        network is built first on the meta device, without initialising its weights (the
        initialisation would be wasted). Raises UsageError when the clip settings do not fit a
        layer."""
        if net is None:
            with torch.device("meta"):  # no memory and no default init; `to_empty` gives real (unset) storage
                net = self.build() if num_classes is None else self.build(num_classes=num_classes)
            net = net.to_empty(device="cpu")
        layers = net.check_layers(layers)
        clip = torch.zeros(0, 3, self.input.frames, *self.input.crop, device=next(net.parameters()).device)
        training = net.training
        try:
            with torch.inference_mode():
                out = net.eval()(clip, layers)
        except RuntimeError as exc:
            raise UsageError(
                f"{self.name}: {self.input.frames}-frame clips of {self.input.crop} do not fit "
                f"the layers {', '.join(layers)}: {exc}") from None
        finally:
            net.train(training)
        return {name: tuple(t.shape[1:]) for name, t in out.items()}
