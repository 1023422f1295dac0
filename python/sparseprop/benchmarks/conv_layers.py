"""The convolution layers the ``--conv`` table times: presets from ResNet-18 (CIFAR) and
MobileNet, and the ``--layers`` parser (names, groups, ``IN-OUT-kK[-sS][-gG]@SIZE`` specs)."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from sparseprop import SparseConv2d


@dataclass(frozen=True)
class ConvLayer:
    """One benchmarked convolution: ``in_channels -> out_channels``, square kernel,
    padding ``kernel // 2``, no bias, on ``size x size`` inputs."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    size: int = 32

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def label(self) -> str:
        k = f"{self.kernel}x{self.kernel}" + (f"/{self.stride}" if self.stride != 1 else "")
        if self.groups == self.in_channels == self.out_channels and self.groups > 1:
            return f"dw{k} {self.in_channels} @{self.size}"
        g = f" g{self.groups}" if self.groups != 1 else ""
        return f"{k} {self.in_channels}>{self.out_channels}{g} @{self.size}"

    def make(self, sparsity: float, generator: Optional[torch.Generator] = None) -> SparseConv2d:
        """A random ``SparseConv2d`` of this layer (its dense twin: ``.to_dense()``)."""
        return SparseConv2d(self.in_channels, self.out_channels, self.kernel, stride=self.stride,
                            padding=self.padding, groups=self.groups, bias=False,
                            sparsity=sparsity, generator=generator)


_RESNET = [
    # ResNet-18 (CIFAR) 3x3 stride-1 convolutions of the four stages
    ConvLayer("c64", 64, 64, 3, 1, 1, 32),
    ConvLayer("c128", 128, 128, 3, 1, 1, 16),
    ConvLayer("c256", 256, 256, 3, 1, 1, 8),
    ConvLayer("c512", 512, 512, 3, 1, 1, 4),
    # first conv of stages 2-4: 3x3 stride 2
    ConvLayer("down128", 64, 128, 3, 2, 1, 32),
    ConvLayer("down256", 128, 256, 3, 2, 1, 16),
    ConvLayer("down512", 256, 512, 3, 2, 1, 8),
    # their shortcuts: 1x1 stride 2
    ConvLayer("sc128", 64, 128, 1, 2, 1, 32),
    ConvLayer("sc256", 128, 256, 1, 2, 1, 16),
    ConvLayer("sc512", 256, 512, 1, 2, 1, 8),
]
_MOBILENET = [
    ConvLayer("dw128", 128, 128, 3, 1, 128, 16),   # depthwise 3x3
    ConvLayer("pw128", 128, 256, 1, 1, 1, 16),     # pointwise 1x1
]
PRESET_LAYERS: Dict[str, ConvLayer] = {layer.name: layer for layer in _RESNET + _MOBILENET}
LAYER_GROUPS = {"resnet": [layer.name for layer in _RESNET],
                "mobilenet": [layer.name for layer in _MOBILENET],
                "all": list(PRESET_LAYERS)}

_SPEC = re.compile(r"^(\d+)-(\d+)-k(\d+)((?:-[sg]\d+)*)@(\d+)$")


def parse_layers(text: str) -> List[ConvLayer]:
    """Comma-separated preset names (``c64``, ``down128``, ``sc256``, ``dw128``, ...), groups
    (``resnet``, ``mobilenet``, ``all``) or specs ``IN-OUT-kK[-sS][-gG]@SIZE``; an
    ``argparse.ArgumentTypeError`` names what is wrong."""
    layers: List[ConvLayer] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key = item.lower()
        if key in LAYER_GROUPS:
            layers += [PRESET_LAYERS[n] for n in LAYER_GROUPS[key]]
        elif key in PRESET_LAYERS:
            layers.append(PRESET_LAYERS[key])
        else:
            layers.append(_parse_spec(item, key))
    if not layers:
        raise argparse.ArgumentTypeError("no layers given")
    return list(dict.fromkeys(layers))  # drop repeats, keep order


def _parse_spec(item: str, key: str) -> ConvLayer:
    m = _SPEC.match(key)
    if not m:
        raise argparse.ArgumentTypeError(
            f"bad layer {item!r}: expected one of {', '.join(list(LAYER_GROUPS) + list(PRESET_LAYERS))} "
            f"or IN-OUT-kK[-sS][-gG]@SIZE, e.g. 64-128-k3-s2@32")
    cin, cout, k, opts, size = m.groups()
    extra = dict(re.findall(r"-([sg])(\d+)", opts))
    layer = ConvLayer(item, int(cin), int(cout), int(k), int(extra.get("s", 1)),
                      int(extra.get("g", 1)), int(size))
    if min(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups,
           layer.size) < 1 or layer.in_channels % layer.groups or layer.out_channels % layer.groups:
        raise argparse.ArgumentTypeError(f"bad layer {item!r}: sizes must be positive and "
                                         f"groups must divide both channel counts")
    if layer.out_size < 1:
        raise argparse.ArgumentTypeError(f"bad layer {item!r}: kernel larger than the input")
    return layer
