"""Networks registered by name and rebuilt from a config dict (the ``net`` field of a model card).

Every net has a ``body`` and a ``head`` (ANIL adapts only the head), records its ``config`` and the
shape of one input, and takes parameters with or without a leading task dimension (see ``layers``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from app.meta.layers import BatchNorm2d, ConvBlocks, Linear

__all__ = ["NETS", "MetaNet", "build_net", "is_head"]


class MetaNet(nn.Module):
    """A body followed by a linear head, with the config that rebuilds it."""

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], body: nn.Module, head: Linear):
        super().__init__()
        self.config = config
        self.input_shape = input_shape
        self.body = body
        self.head = head

    @property
    def outputs(self) -> int:
        """Width of the head: regression targets or classification ways."""
        return self.head.out_features

    @property
    def per_example(self) -> bool:
        """Whether each example's output depends on that example alone: false with batch norm, whose
        statistics mix the examples of a set, so padding a set would change its answers."""
        return not any(isinstance(m, BatchNorm2d) for m in self.modules())

    def forward(self, x: Any) -> Any:
        return self.head(self.body(x))


def is_head(name: str) -> bool:
    """Whether a parameter belongs to the head (the part ANIL adapts)."""
    return name.startswith("head.")


def mlp(sizes: list[int] | tuple[int, ...] = (1, 40, 40, 1)) -> MetaNet:
    """ReLU MLP; the default 1-40-40-1 is Finn et al. 2017's sinusoid regressor."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"mlp sizes must list at least an input and an output width, all >= 1; got {sizes}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
        layers += [Linear(fan_in, fan_out), nn.ReLU()]
    config = {"name": "mlp", "sizes": sizes}
    return MetaNet(config, (sizes[0],), nn.Sequential(*layers), Linear(sizes[-2], sizes[-1]))


def conv4(ways: int = 5, channels: int = 1, hidden: int = 64, size: int = 28) -> MetaNet:
    """Conv4 of Vinyals et al. 2016 / Finn et al. 2017: 4 x [conv3x3, batch norm, ReLU, max-pool 2]."""
    if ways < 2 or channels < 1 or hidden < 1 or size < 16:
        raise ValueError(
            f"conv4 needs ways >= 2, channels >= 1, hidden >= 1 and size >= 16; "
            f"got ways={ways}, channels={channels}, hidden={hidden}, size={size}"
        )
    config = {"name": "conv4", "ways": ways, "channels": channels, "hidden": hidden, "size": size}
    body = ConvBlocks([channels] + [hidden] * 4)
    side = size // 16  # after four max-pools of 2
    return MetaNet(config, (channels, size, size), body, Linear(hidden * side * side, ways))


NETS: dict[str, Callable[..., MetaNet]] = {"mlp": mlp, "conv4": conv4}


def build_net(config: Mapping[str, Any]) -> MetaNet:
    """Build the registered net that ``config`` names, e.g. ``{"name": "conv4", "ways": 5}``."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in NETS:
        raise ValueError(f"net name must be one of {sorted(NETS)}; got {name!r}")
    try:
        return NETS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options for net {name!r}: {error}") from error
