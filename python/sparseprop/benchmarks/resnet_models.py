"""The CIFAR ResNet the benchmarks and tests train, and the helpers to sparsify it.

(They used to be ``sparseprop.models``, which still forwards to them with a
DeprecationWarning.)

* :func:`resnet18_cifar`: the CIFAR variant of ResNet-18 (3x3 stem, no max-pool).
* :func:`sparsify_convs`: replace ``nn.Conv2d`` layers by ``SparseConv2d``.
* :func:`conv_names`, :func:`count_params`: what a model holds.

``sparsify_convs`` changes the model in place and returns it; use ``copy.deepcopy``
first to keep the original (``sparseprop.densify(copy.deepcopy(sparse_model))`` is the
dense model with the same masked weights, e.g. to compare speed). It swaps modules with
:mod:`sparseprop.module_tree`, like ``sparseprop.sparsify`` and the pruners.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from sparseprop import SparseConv2d, SparseLinear
from ..conv.batchnorm import LayoutBatchNorm2d
from ..module_tree import module_occurrences, replace_all, sparse_twin

__all__ = ["BasicBlock", "ResNetCIFAR", "resnet18_cifar", "sparsify_convs", "conv_names",
           "count_params"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The BatchNorms are :class:`~sparseprop.conv.batchnorm.LayoutBatchNorm2d` (nn.BatchNorm2d
    with the same state_dict), so once the convs are sparse the activations stay in the
    kernels' layout through the whole block.

    The shortcut is the identity, or (when the stride or width changes) a 1x1
    stride-``stride`` convolution followed by BN, named ``downsample`` as in torchvision.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = LayoutBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = LayoutBatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                LayoutBatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(out)


class ResNetCIFAR(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stride-1 stem (``conv1``), no max-pool, four
    stages (``layer1``..``layer4``) of 64/128/256/512 channels, global average
    pool, linear classifier (``fc``)."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = LayoutBatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet18_cifar(num_classes: int = 10) -> ResNetCIFAR:
    """CIFAR-style ResNet-18 (11.2M parameters for 10 classes): 20 convolutions
    (stem, 16 in the BasicBlocks, 3 1x1 shortcuts), BatchNorm+ReLU, avg pool, fc."""
    return ResNetCIFAR((2, 2, 2, 2), num_classes)


# ----------------------------------------------------------------------------------------
# conversion helpers
# ----------------------------------------------------------------------------------------
def conv_names(model: nn.Module, skip: Iterable[str] = ()) -> List[str]:
    """Qualified names of the ``nn.Conv2d`` modules of ``model``, minus ``skip``."""
    skip = set(skip)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in skip]


def sparsify_convs(model: nn.Module, sparsity: float, skip: Iterable[str] = ("conv1",)) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` (in place) by ``SparseConv2d.from_dense(conv,
    sparsity=sparsity)`` and return ``model``.

    ``skip`` holds *qualified* module names left dense: the default ``("conv1",)`` is the
    stem of :func:`resnet18_cifar` only (the blocks' ``layer1.0.conv1`` etc. are converted).
    ``from_dense`` keeps the largest-magnitude weights; on a freshly initialized model
    (i.i.d. weights) that is a uniformly random unstructured pattern with exactly
    ``round((1 - sparsity) * numel)`` nonzeros per layer (unlike :func:`sparseprop.sparsify`,
    which never keeps a zero weight). Each new layer keeps the train/eval mode and
    ``requires_grad`` of the one it replaces, at every name it is registered under.
    """
    names = conv_names(model, skip)
    if "" in names:
        raise ValueError(f"cannot replace the model itself ({type(model).__name__}) in place; "
                         f"wrap it in a container first")
    occurrences = module_occurrences(model)
    for name in names:
        conv = model.get_submodule(name)
        replace_all(model, occurrences[id(conv)][1], sparse_twin(conv, sparsity=sparsity))
    return model


def count_params(model: nn.Module) -> Tuple[int, int]:
    """(trainable parameters, of which in sparse layers' ``values``)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sparse = sum(m.values.numel() for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear)))
    return total, sparse
