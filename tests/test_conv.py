"""Numerical oracle for SparseConv2d: outputs and gradients against the masked dense
nn.Conv2d from ``to_dense()``, on every kernel path this CPU can run.

The main grid is a seeded random sample (random.Random(0)) of the nn.Conv2d option
space; named edge cases always run.
"""
from __future__ import annotations

import copy
import math
import random
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprop
from sparseprop import SparseConv2d, _C
from sparseprop import conv as conv_module

from conftest import clone_input, tol


# --------------------------------------------------------------------------------------
# oracle helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def dense_oracle_single_threaded():
    """Pin sparseprop to the thread count it would use anyway, and run torch (the
    dense oracle) single-threaded: on a shared, oversubscribed machine a 2-thread
    mkldnn conv on these tiny shapes costs ~100x more than one thread. conftest's
    restore_global_state undoes both afterwards."""
    sparseprop.set_num_threads(sparseprop.get_num_threads())
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True, params=["batch", "width"])
def layout(request):
    """Every test runs with each data layout forced in turn."""
    previous = conv_module.set_layout(request.param)
    yield request.param
    conv_module.set_layout(previous)


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def fan_in(m) -> int:
    return m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]


def fan_out(m) -> int:
    return m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]


def dense_twin(m: SparseConv2d) -> nn.Conv2d:
    d = m.to_dense()
    assert type(d) is nn.Conv2d
    return d


def compare_conv(m: SparseConv2d, base: torch.Tensor, make_view: Callable = lambda b: b,
                 grad_out: Optional[Callable] = None, dense: Optional[nn.Conv2d] = None,
                 what: str = "") -> torch.Tensor:
    """Forward + backward of ``make_view(base)`` through ``m`` and its dense twin.

    Checks the output, the gradient reaching ``base`` (if it requires grad), the
    values gradient (dense weight gradient gathered at the pattern) and the bias
    gradient. ``grad_out(shape)`` builds the upstream gradient (default randn).
    Returns the sparse output.
    """
    dense = dense_twin(m) if dense is None else dense
    m.zero_grad(set_to_none=True)
    dense.zero_grad(set_to_none=True)
    base_d = clone_input(base)
    x, xd = make_view(base), make_view(base_d)
    y = m(x)
    yd = dense(xd)
    assert y.shape == yd.shape, f"shape {what}: {tuple(y.shape)} vs {tuple(yd.shape)}"
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, yd, **tol(fan_in(m)), msg=lambda s: f"output {what}: {s}")
    gy = torch.randn(yd.shape) if grad_out is None else grad_out(yd.shape)
    y.backward(gy)
    yd.backward(gy)
    if base.requires_grad:
        assert base.grad is not None and base.grad.shape == base.shape
        torch.testing.assert_close(base.grad, base_d.grad, **tol(fan_out(m)),
                                   msg=lambda s: f"input grad {what}: {s}")
    positions = max(1, yd.numel() // max(1, m.out_channels))  # N * OH * OW
    assert m.values.grad is not None and m.values.grad.shape == m.values.shape
    expected = m.pattern.gather(dense.weight.grad.flatten(1))
    torch.testing.assert_close(m.values.grad, expected, **tol(positions),
                               msg=lambda s: f"values grad {what}: {s}")
    if m.bias is not None:
        torch.testing.assert_close(m.bias.grad, dense.bias.grad, **tol(positions),
                                   msg=lambda s: f"bias grad {what}: {s}")
    return y


# Input layouts: name -> (base tensor for (n, c, h, w), view of the base fed to the layer).
def _layout(name: str, n: int, c: int, h: int, w: int):
    if name == "contiguous":
        return torch.randn(n, c, h, w), lambda b: b
    if name == "channels_last":
        base = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
        return base, lambda b: b
    if name == "strided":  # every other row and a column offset of a bigger tensor
        return torch.randn(n, c, 2 * h, w + 1), lambda b: b[:, :, ::2, 1:]
    if name == "permuted":  # H and W swapped in memory, batch after channels
        return torch.randn(c, n, w, h), lambda b: b.permute(1, 0, 3, 2)
    if name == "expanded":  # stride-0 batch
        return torch.randn(1, c, h, w), lambda b: b.expand(n, c, h, w)
    if name == "unbatched":
        return torch.randn(c, h, w), lambda b: b
    raise AssertionError(name)


LAYOUTS = ["contiguous", "channels_last", "strided", "permuted", "expanded", "unbatched"]


# --------------------------------------------------------------------------------------
# the randomized grid
# --------------------------------------------------------------------------------------
KERNELS = [(1, 1), (3, 3), (5, 5), (1, 3), (7, 7)]
STRIDES = [1, 2, 3, (2, 1)]
PADDINGS = [0, 1, (2, 1), "same", "valid"]
DILATIONS = [1, 2, (2, 1)]
GROUPS = ["1", "2", "depthwise"]
BATCHES = [1, 3, 8, 13]
SIZES = [(7, 9), (8, 8), (11, 6), (5, 5), (12, 10), (6, 13)]
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
GRID_LAYOUTS = ["contiguous", "channels_last", "strided", "permuted", "unbatched"]


@dataclass(frozen=True)
class Config:
    in_channels: int
    out_channels: int
    kernel: Tuple[int, int]
    stride: Union[int, Tuple[int, int]]
    padding: Union[str, int, Tuple[int, int]]
    dilation: Union[int, Tuple[int, int]]
    groups: int
    batch: int
    size: Tuple[int, int]
    sparsity: float
    layout: str
    bias: bool
    input_grad: bool = True  # False: only values/bias need gradients (a separate backward path)

    def output_size(self) -> Tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, _pair(self.stride), _pair(self.dilation)
        if self.padding == "same":
            return self.size
        ph, pw = (0, 0) if self.padding == "valid" else _pair(self.padding)
        oh = (self.size[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (self.size[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return oh, ow

    def build(self, generator=None) -> SparseConv2d:
        return SparseConv2d(self.in_channels, self.out_channels, self.kernel, self.stride,
                            self.padding, self.dilation, self.groups, self.bias,
                            sparsity=self.sparsity, generator=generator)

    def id(self) -> str:
        k = f"k{self.kernel[0]}x{self.kernel[1]}"
        pad = self.padding if isinstance(self.padding, str) else str(self.padding).replace(" ", "")
        return (f"{self.in_channels}to{self.out_channels}-{k}-s{str(self.stride).replace(' ', '')}"
                f"-p{pad}-d{str(self.dilation).replace(' ', '')}-g{self.groups}-n{self.batch}"
                f"-{self.size[0]}x{self.size[1]}-sp{self.sparsity}-{self.layout}"
                + ("" if self.bias else "-nobias") + ("" if self.input_grad else "-nograd_x"))


def _sample_configs(count: int, seed: int = 0):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        groups_kind = rng.choice(GROUPS)
        if groups_kind == "1":
            cin, cout, groups = rng.choice([1, 3, 4, 5]), rng.choice([1, 4, 6]), 1
        elif groups_kind == "2":
            cin, cout, groups = rng.choice([2, 4, 6]), rng.choice([2, 4, 6]), 2
        else:
            cin = rng.choice([1, 3, 4])
            cout, groups = cin * rng.choice([1, 2]), cin
        stride = rng.choice(STRIDES)
        padding = rng.choice(PADDINGS)
        if padding == "same" and stride != 1:
            continue  # nn.Conv2d rejects it too (tested in test_conv_errors.py)
        cfg = Config(cin, cout, rng.choice(KERNELS), stride, padding, rng.choice(DILATIONS), groups,
                     rng.choice(BATCHES), rng.choice(SIZES), rng.choice(SPARSITIES),
                     rng.choice(GRID_LAYOUTS), rng.random() < 0.8, rng.random() < 0.75)
        if min(cfg.output_size()) < 1:
            continue  # kernel larger than the (padded) input: nn.Conv2d raises as well
        configs.append(cfg)
    return configs


GRID = _sample_configs(40)


def _check_config(cfg: Config, what: str = "") -> None:
    m = cfg.build()
    assert m.nnz == round((1 - cfg.sparsity) * math.prod(m.weight_shape))
    unbatched = cfg.layout == "unbatched"
    base, view = _layout(cfg.layout, cfg.batch, cfg.in_channels, *cfg.size)
    base.requires_grad_(cfg.input_grad)
    y = compare_conv(m, base, view, what=what or cfg.id())
    if not cfg.input_grad:
        assert base.grad is None
    oh, ow = cfg.output_size()
    assert y.shape == ((cfg.out_channels, oh, ow) if unbatched else (cfg.batch, cfg.out_channels, oh, ow))


def test_grid_covers_the_option_space():
    """The seeded sample exercises every listed value of every option at least once."""
    seen = lambda f: {f(c) for c in GRID}  # noqa: E731
    assert seen(lambda c: c.kernel) == set(KERNELS)
    assert seen(lambda c: c.stride) == set(STRIDES)
    assert seen(lambda c: c.padding) == set(PADDINGS)
    assert seen(lambda c: c.dilation) == set(DILATIONS)
    assert seen(lambda c: c.batch) == set(BATCHES)
    assert seen(lambda c: c.sparsity) == set(SPARSITIES)
    assert seen(lambda c: c.layout) == set(GRID_LAYOUTS)
    assert seen(lambda c: c.bias) == seen(lambda c: c.input_grad) == {True, False}
    assert {1, 2} <= seen(lambda c: c.groups)
    assert any(c.groups == c.in_channels > 2 for c in GRID), "no depthwise config"


@pytest.mark.parametrize("cfg", GRID, ids=[c.id() for c in GRID])
def test_matches_dense_grid(isa, cfg):
    _check_config(cfg, f"[{isa}] {cfg.id()}")


# --------------------------------------------------------------------------------------
# named edge cases (always run)
# --------------------------------------------------------------------------------------
EDGE_CASES = {
    # a 1x1 kernel with stride 2 ignores odd rows/columns (phases never read)
    "1x1-stride2": Config(4, 6, (1, 1), 2, 0, 1, 1, 3, (7, 9), 0.0, "contiguous", True),
    # stride larger than the kernel: whole phases unused; rows dropped at the end
    "1x1-stride3-odd": Config(3, 4, (1, 1), 3, 1, 1, 1, 5, (11, 6), 0.5, "contiguous", True),
    # the kernel covers the whole input: a 1x1 output
    "kernel-equals-input": Config(3, 5, (5, 5), 1, 0, 1, 1, 4, (5, 5), 0.0, "contiguous", True),
    # the dilated kernel spans exactly the padded input
    "dilated-span-equals-input": Config(2, 3, (3, 3), 1, 1, 3, 1, 2, (5, 5), 0.0, "contiguous", True),
    # padding wider than the kernel: border outputs are just the bias
    "padding-wider-than-kernel": Config(3, 4, (1, 1), 1, 3, 1, 1, 2, (4, 5), 0.0, "contiguous", True),
    # (H + 2p - k) not a multiple of the stride: trailing rows/cols unused
    "stride3-remainder": Config(3, 4, (3, 3), 3, 1, 1, 1, 3, (12, 10), 0.3, "contiguous", True),
    # anisotropic everything
    "anisotropic": Config(4, 6, (3, 5), (1, 3), (2, 0), (3, 1), 2, 3, (11, 13), 0.4, "contiguous", True),
    # even kernel with 'same': asymmetric padding (PyTorch pads more at the end)
    "same-even-kernel": Config(3, 4, (2, 4), 1, "same", (1, 2), 1, 3, (6, 9), 0.2, "contiguous", True),
    "same-dilated-7x7": Config(2, 4, (7, 7), 1, "same", 2, 1, 2, (8, 8), 0.5, "contiguous", True),
    # depthwise with a channel multiplier, stride 2
    "depthwise-x2-stride2": Config(4, 8, (3, 3), 2, 1, 1, 4, 5, (9, 8), 0.3, "contiguous", True),
    "single-channel": Config(1, 1, (3, 3), 1, 1, 1, 1, 1, (1, 1), 0.0, "contiguous", True),
    "single-pixel-input": Config(3, 4, (1, 1), 1, 0, 1, 1, 7, (1, 1), 0.0, "contiguous", True),
    "one-row-input": Config(3, 4, (1, 3), (2, 1), 0, 1, 1, 3, (1, 17), 0.0, "contiguous", True),
    # larger batches: the vector dimension is (output column, batch), batch innermost
    "batch-37": Config(3, 5, (3, 3), 1, 1, 1, 1, 37, (6, 7), 0.5, "contiguous", True),
    "batch-64-stride2": Config(4, 4, (3, 3), 2, 1, 1, 2, 64, (8, 8), 0.5, "contiguous", True),
    "wide-row-batch-1": Config(2, 3, (3, 3), 1, 1, 1, 1, 1, (3, 150), 0.5, "contiguous", True),
    # memory layouts that the grid may not hit with every option
    "expanded-batch": Config(3, 4, (3, 3), 2, 1, 1, 1, 6, (8, 7), 0.5, "expanded", True),
    "channels-last-depthwise": Config(4, 4, (3, 3), 1, 1, 1, 4, 3, (7, 9), 0.5, "channels_last", True),
    "strided-stride2-dilated": Config(3, 6, (3, 3), 2, 2, 2, 1, 3, (11, 6), 0.5, "strided", True),
    "permuted-groups2": Config(4, 6, (3, 3), 1, 1, 1, 2, 3, (8, 8), 0.5, "permuted", False),
    "unbatched-stride2": Config(3, 4, (3, 3), 2, 1, 1, 1, 1, (7, 9), 0.5, "unbatched", True),
    "unbatched-same": Config(3, 4, (5, 5), 1, "same", 1, 1, 1, (6, 6), 0.5, "unbatched", False),
    "fully-sparse": Config(3, 4, (3, 3), 1, 1, 1, 1, 3, (6, 6), 1.0, "contiguous", True),
    "dense-7x7-stride2": Config(3, 4, (7, 7), 2, 3, 1, 1, 2, (12, 10), 0.0, "contiguous", True),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases(isa, name):
    cfg = EDGE_CASES[name]
    assert min(cfg.output_size()) >= 1
    _check_config(cfg, f"[{isa}] {name}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_with_stride_and_groups(isa, layout):
    m = SparseConv2d(4, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, sparsity=0.4)
    base, view = _layout(layout, 5, 4, 9, 8)
    compare_conv(m, base.requires_grad_(), view, what=f"[{isa}] {layout}")


def test_isas_agree_with_each_other():
    m = SparseConv2d(6, 8, 3, stride=2, padding=1, groups=2, sparsity=0.6)
    x = torch.randn(5, 6, 11, 9)
    gy = torch.randn(5, 8, 6, 5)
    results = {}
    for name in sparseprop.available_isas():
        with sparseprop.use_isa(name):
            m.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(gy)
            results[name] = (y.detach(), xi.grad, m.values.grad.clone(), m.bias.grad.clone())
    ref = results["scalar"]
    for name, got in results.items():
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **tol(27), msg=lambda s: f"{name} vs scalar: {s}")


# --------------------------------------------------------------------------------------
# upstream gradients of any layout
# --------------------------------------------------------------------------------------
GRAD_LAYOUTS = {
    "channels_last": lambda shape: torch.randn(shape).to(memory_format=torch.channels_last),
    "strided": lambda shape: torch.randn(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2],
    "transposed-batch": lambda shape: torch.randn(shape[1], shape[0], shape[2], shape[3]).transpose(0, 1),
    "expanded": lambda shape: torch.randn(1, shape[1], 1, 1).expand(shape),
    "misaligned": lambda shape: torch.randn(math.prod(shape) + 1)[1:].view(shape),
}


@pytest.mark.parametrize("grad_layout", sorted(GRAD_LAYOUTS))
def test_upstream_gradient_layouts(isa, grad_layout):
    m = SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.5)
    base = torch.randn(3, 4, 9, 8, requires_grad=True)
    compare_conv(m, base, grad_out=GRAD_LAYOUTS[grad_layout], what=f"[{isa}] grad {grad_layout}")


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("stride", [1, 2])
def test_stride0_upstream_gradient(isa, reduce, stride):
    """y.sum().backward() hands the layer an expanded (all strides 0) gradient."""
    m = SparseConv2d(3, 5, 3, stride=stride, padding=1, sparsity=0.5)
    d = dense_twin(m)
    x = torch.randn(4, 3, 7, 9, requires_grad=True)
    xd = clone_input(x)
    getattr(m(x), reduce)().backward()
    getattr(d(xd), reduce)().backward()
    torch.testing.assert_close(x.grad, xd.grad, **tol(45))
    torch.testing.assert_close(m.values.grad, m.pattern.gather(d.weight.grad.flatten(1)), **tol(4 * 63))
    torch.testing.assert_close(m.bias.grad, d.bias.grad, **tol(4 * 63))


# --------------------------------------------------------------------------------------
# padding modes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=(2, 1), stride=2),
    dict(kernel_size=(1, 3), padding=(0, 2), dilation=(1, 2)),
    dict(kernel_size=(2, 4), padding="same"),
    dict(kernel_size=5, padding="same", groups=2),
    dict(kernel_size=3, padding="valid", stride=(2, 1)),
], ids=["3x3-p1", "3x3-p2x1-s2", "1x3-p0x2-d1x2", "2x4-same", "5x5-same-g2", "3x3-valid-s2x1"])
def test_padding_modes(isa, padding_mode, geometry):
    m = SparseConv2d(4, 6, padding_mode=padding_mode, sparsity=0.3, **geometry)
    d = dense_twin(m)
    assert d.padding_mode == padding_mode
    for shape in [(3, 4, 7, 9), (4, 6, 5)]:
        compare_conv(m, torch.randn(*shape, requires_grad=True), dense=d,
                     what=f"[{isa}] {padding_mode} {geometry} {shape}")


# --------------------------------------------------------------------------------------
# autograd modes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_no_bias(isa, stride):
    m = SparseConv2d(4, 6, 3, stride=stride, padding=1, bias=False, sparsity=0.5)
    assert m.bias is None and "bias" not in dict(m.named_parameters())
    assert "bias" not in m.state_dict()
    d = dense_twin(m)
    assert d.bias is None
    compare_conv(m, torch.randn(3, 4, 8, 7, requires_grad=True), dense=d)


@pytest.mark.parametrize("stride", [1, 2])
def test_input_without_requires_grad(isa, stride):
    m = SparseConv2d(4, 6, 3, stride=stride, padding=1, sparsity=0.5)
    x = torch.randn(3, 4, 8, 7)
    compare_conv(m, x)
    assert x.grad is None
    assert m.values.grad is not None and m.bias.grad is not None


def test_frozen_values_still_give_input_grad(isa):
    m = SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.5)
    m.values.requires_grad_(False)
    d = dense_twin(m)
    x = torch.randn(3, 4, 8, 7, requires_grad=True)
    xd = clone_input(x)
    gy = torch.randn(3, 6, 4, 4)
    m(x).backward(gy)
    d(xd).backward(gy)
    assert m.values.grad is None
    torch.testing.assert_close(x.grad, xd.grad, **tol(54))
    torch.testing.assert_close(m.bias.grad, d.bias.grad, **tol(48))


def test_only_bias_trainable(isa):
    m = SparseConv2d(4, 6, 3, padding=1, sparsity=0.5)
    m.values.requires_grad_(False)
    d = dense_twin(m)
    x = torch.randn(2, 4, 5, 5)
    m(x).pow(2).sum().backward()
    d(x).pow(2).sum().backward()
    assert m.values.grad is None
    torch.testing.assert_close(m.bias.grad, d.bias.grad, **tol(50))


def test_no_grad(isa):
    m = SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.5)
    x = torch.randn(3, 4, 8, 7, requires_grad=True)
    with torch.no_grad():
        y = m(x)
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, dense_twin(m)(x).detach(), **tol(36))


def test_inference_mode(isa):
    m = SparseConv2d(4, 6, 3, padding=1, sparsity=0.5)
    x = torch.randn(3, 4, 8, 7)
    with torch.inference_mode():
        y = m(x)
    torch.testing.assert_close(y, dense_twin(m)(x).detach(), **tol(36))


def test_gradient_accumulates_over_calls(isa):
    m = SparseConv2d(3, 4, 3, padding=1, sparsity=0.5)
    d = dense_twin(m)
    for shape in [(2, 3, 6, 6), (3, 3, 5, 7), (2, 3, 6, 6)]:
        x = torch.randn(*shape)
        m(x).pow(2).sum().backward()
        d(x).pow(2).sum().backward()
    torch.testing.assert_close(m.values.grad, m.pattern.gather(d.weight.grad.flatten(1)), **tol(250))
    torch.testing.assert_close(m.bias.grad, d.bias.grad, **tol(250))


def test_double_backward_raises(isa):
    m = SparseConv2d(3, 4, 3, padding=1, sparsity=0.5)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|double"):
        gx.sum().backward()


def test_inplace_op_on_output(isa):
    """Like nn.Conv2d's, the output can be modified in place (nn.ReLU(inplace=True))."""
    m = SparseConv2d(3, 4, 3, stride=2, padding=1, sparsity=0.5)
    d = dense_twin(m)
    x = torch.randn(2, 3, 7, 7, requires_grad=True)
    xd = clone_input(x)
    y = m(x).mul_(2.0).relu_()
    yd = d(xd).mul_(2.0).relu_()
    torch.testing.assert_close(y, yd, **tol(27))
    y.sum().backward()
    yd.sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, **tol(36))
    torch.testing.assert_close(m.values.grad, m.pattern.gather(d.weight.grad.flatten(1)), **tol(32))


@pytest.mark.filterwarnings("ignore:Input #.* requires gradient and is not a double")
def test_gradcheck_float32_small(isa):
    m = SparseConv2d(2, 3, 3, stride=2, padding=1, dilation=(1, 2), sparsity=0.3)

    def fn(x, values, bias):
        return torch.func.functional_call(m, {"values": values, "bias": bias}, (x,))

    x = torch.randn(2, 2, 5, 6, requires_grad=True)
    values = m.values.detach().clone().requires_grad_()
    bias = m.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, values, bias), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_special_values_propagate(isa):
    """A NaN pixel only reaches the outputs whose receptive field contains it."""
    m = SparseConv2d(1, 1, 3, padding=1, sparsity=0.0)
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 0] = float("nan")
    y = m(x).detach()
    d = dense_twin(m)(x).detach()
    assert torch.equal(torch.isnan(y), torch.isnan(d))
    assert torch.isnan(y[0, 0, :2, :2]).all() and not torch.isnan(y[0, 0, 2:]).any()


# --------------------------------------------------------------------------------------
# shapes, plan cache and pattern changes
# --------------------------------------------------------------------------------------
def test_many_input_shapes_reuse_one_module(isa):
    """Index plans are cached per input shape (a bounded cache); cycling through more
    shapes than it holds, and back, must not mix plans up."""
    m = SparseConv2d(3, 4, 3, stride=2, padding=1, sparsity=0.5)
    d = dense_twin(m)
    shapes = [(n, 3, h, w) for n, h, w in [(1, 5, 5), (2, 5, 5), (2, 6, 5), (2, 5, 6), (3, 9, 9),
                                           (1, 3, 3), (4, 8, 8), (2, 7, 11), (5, 4, 4), (1, 12, 3)]]
    for shape in shapes + shapes[::-1] + shapes[:3]:
        compare_conv(m, torch.randn(*shape, requires_grad=True), dense=d, what=str(shape))


def test_batched_and_unbatched_share_a_plan(isa):
    m = SparseConv2d(3, 4, 3, padding=1, sparsity=0.5)
    x = torch.randn(3, 6, 7)
    y1 = m(x)
    y2 = m(x.unsqueeze(0))
    assert y1.shape == (4, 6, 7) and y2.shape == (1, 4, 6, 7)
    assert torch.equal(y1, y2[0])


def test_set_pattern_after_forward_invalidates_plans(isa):
    m = SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.8)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    compare_conv(m, x)  # caches a plan for this shape
    new = sparseprop.CSRPattern.random(*m.pattern_shape, 0.3)
    m.set_pattern(new, torch.randn(new.nnz))
    compare_conv(m, torch.randn(2, 4, 7, 7, requires_grad=True), what="after set_pattern")


def test_inplace_buffer_edit_after_forward_is_seen(isa):
    """A valid in-place edit of the indices buffer (tracked by its version) changes the
    pattern; the cached plan for that shape must not be reused."""
    m = SparseConv2d(2, 3, 3, padding=1, sparsity=0.5)
    x = torch.randn(2, 2, 5, 5)
    m(x)
    row0 = int(m.indptr[1])
    assert 1 <= row0 < 18
    cols = m.indices[:row0].tolist()
    free = min(set(range(18)) - set(cols))
    new = sorted(cols[:-1] + [free])
    with torch.no_grad():
        m.indices[:row0] = torch.tensor(new, dtype=torch.int32)
    assert bool(m.pattern.mask()[0, free])
    compare_conv(m, x.clone().requires_grad_(), what="after in-place edit")


# --------------------------------------------------------------------------------------
# buffers handed to the caller stay the caller's
# --------------------------------------------------------------------------------------
def test_held_outputs_and_grads_are_not_overwritten_by_later_calls(isa):
    """Outputs, input gradients and saved activations must never share memory with
    what a later call of the same shape produces."""
    m = SparseConv2d(3, 4, 3, stride=2, padding=1, sparsity=0.5)
    d = dense_twin(m)
    xs = [torch.randn(2, 3, 7, 7, requires_grad=True) for _ in range(6)]
    gy = torch.randn(2, 4, 4, 4)
    ys = [m(x) for x in xs]  # six graphs alive at once, same shape
    expected = [d(x).detach() for x in xs]
    for y, e in zip(ys, expected):
        torch.testing.assert_close(y, e, **tol(27))
    detached = [m(x).detach() for x in xs]  # graphs freed at once, outputs kept
    no_grad = []
    with torch.no_grad():
        for x in xs:
            no_grad.append(m(x))
    for y, e in zip(detached + no_grad, expected + expected):
        torch.testing.assert_close(y, e, **tol(27))
    # backward in reverse order, each against a fresh dense gradient
    for x, y in reversed(list(zip(xs, ys))):
        m.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        y.backward(gy)
        xd = clone_input(x)
        d(xd).backward(gy)
        torch.testing.assert_close(m.values.grad, m.pattern.gather(d.weight.grad.flatten(1)), **tol(32))
        torch.testing.assert_close(x.grad, xd.grad, **tol(36))
    grads = [x.grad for x in xs]
    assert len({g.data_ptr() for g in grads}) == len(grads)
    for y, e in zip(ys, expected):  # outputs untouched by all the backward passes
        torch.testing.assert_close(y.detach(), e, **tol(27))


def test_concurrent_inference_from_python_threads():
    """Several Python threads running the same layer (e.g. a threaded inference
    server) must each get their own correct output, as with nn.Conv2d. A tiny GIL
    switch interval makes thread interleavings inside forward likely."""
    m = SparseConv2d(4, 8, 3, padding=1, sparsity=0.5)
    d = dense_twin(m)
    xs = [torch.randn(2, 4, 8, 8) for _ in range(4)]
    with torch.no_grad():
        refs = [d(x) for x in xs]
    wrong = []

    def work(i):
        for it in range(1500):
            with torch.no_grad():
                y = m(xs[i])
            if not torch.allclose(y, refs[i], rtol=1e-4, atol=1e-4):
                wrong.append((i, it, float((y - refs[i]).abs().max())))
            if wrong:
                return

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not wrong, f"(thread, iteration, max error) of wrong outputs: {wrong[:5]}"


def test_retain_graph_backward_twice(isa):
    m = SparseConv2d(3, 4, 3, padding=1, sparsity=0.5)
    d = dense_twin(m)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    xd = clone_input(x)
    gy = torch.randn(2, 4, 6, 6)
    y, yd = m(x), d(xd)
    y.backward(gy, retain_graph=True)
    m(torch.randn(2, 3, 6, 6)).sum().backward()  # another graph of the same shape in between
    m.zero_grad(set_to_none=True)
    y.backward(gy, retain_graph=True)
    y.backward(gy)
    yd.backward(gy, retain_graph=True)
    yd.backward(gy)
    torch.testing.assert_close(m.values.grad, m.pattern.gather(d.weight.grad.flatten(1)), **tol(72))
    torch.testing.assert_close(x.grad, 1.5 * xd.grad, **tol(36))  # x got 3 of the dense twin's 2


# --------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,shape", [
    (dict(in_channels=16, out_channels=32, kernel_size=3, padding=1, sparsity=0.5), (8, 16, 12, 12)),
    (dict(in_channels=16, out_channels=16, kernel_size=3, stride=2, padding=1, groups=4, sparsity=0.8),
     (13, 16, 15, 11)),
    (dict(in_channels=8, out_channels=8, kernel_size=5, padding="same", dilation=2, groups=8,
          sparsity=0.0), (3, 8, 10, 9)),
    (dict(in_channels=6, out_channels=12, kernel_size=(1, 3), stride=(2, 1), sparsity=0.9,
          padding_mode="reflect", padding=1), (5, 6, 9, 10)),
], ids=["16to32-3x3", "grouped-stride2", "depthwise-same-dilated", "reflect-1x3-s2x1"])
def test_thread_count_is_bitwise_irrelevant(isa, kwargs, shape):
    m = SparseConv2d(**kwargs)
    x0 = torch.randn(*shape)
    gy = None
    results = []
    for threads in (1, 2, 1, 2):
        sparseprop.set_num_threads(threads)
        assert sparseprop.get_num_threads() == threads
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        y = m(x)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)) if gy is None else gy
        y.backward(gy)
        results.append((y.detach().clone(), x.grad, m.values.grad.clone(), m.bias.grad.clone()))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# a small CNN trains exactly like its masked dense twin
# --------------------------------------------------------------------------------------
def _sparse_cnn(gen):
    return nn.Sequential(
        SparseConv2d(3, 8, 3, padding=1, sparsity=0.5, generator=gen),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        SparseConv2d(8, 12, 3, stride=2, padding=1, groups=2, sparsity=0.7, generator=gen),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    )


def _dense_twin_net(net):
    layers = [layer.to_dense() if isinstance(layer, SparseConv2d) else copy.deepcopy(layer) for layer in net]
    return nn.Sequential(*layers)


def test_small_cnn_trains_like_dense_masked_twin(isa):
    gen = torch.Generator().manual_seed(3)
    net = _sparse_cnn(gen)
    dense = _dense_twin_net(net)
    sparse_convs = [layer for layer in net if isinstance(layer, SparseConv2d)]
    dense_convs = [layer for layer in dense if isinstance(layer, nn.Conv2d)]
    masks = [s.pattern.mask().view(s.weight_shape).float() for s in sparse_convs]
    opt_s = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(16, 3, 10, 9, generator=gen)
    target = torch.randint(0, 4, (16,), generator=gen)
    losses = []
    for step in range(6):
        xb, tb = x[step % 2 * 8:][:8], target[step % 2 * 8:][:8]
        opt_s.zero_grad()
        opt_d.zero_grad()
        loss_s = F.cross_entropy(net(xb), tb)
        loss_d = F.cross_entropy(dense(xb), tb)
        torch.testing.assert_close(loss_s, loss_d, rtol=1e-4, atol=1e-5, msg=lambda s: f"step {step}: {s}")
        losses.append(float(loss_s))
        loss_s.backward()
        loss_d.backward()
        for conv, mask in zip(dense_convs, masks):
            conv.weight.grad.mul_(mask)
        opt_s.step()
        opt_d.step()
    assert losses[-1] < losses[0], losses  # it actually learns
    for s, d, mask in zip(sparse_convs, dense_convs, masks):
        assert torch.equal(d.weight.detach() * (1 - mask), torch.zeros_like(d.weight))
        torch.testing.assert_close(s.weight.detach(), d.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.bias.detach(), d.bias.detach(), rtol=1e-4, atol=1e-5)
    for name in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(net.state_dict()[name], dense.state_dict()[name], rtol=1e-4, atol=1e-5)
    net.eval()
    dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), dense(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------
# layout choice
# --------------------------------------------------------------------------------------
def test_layout_setting_is_checked_and_returned():
    assert conv_module.set_layout("auto") in ("batch", "width")
    with pytest.raises(ValueError, match="conv layout must be one of"):
        conv_module.set_layout("fastest")
    assert conv_module.get_layout() == "auto"  # a rejected name changes nothing
    assert conv_module.set_layout("batch") == "auto"
    assert conv_module.get_layout() == "batch"


def test_auto_layout_rule():
    conv_module.set_layout("auto")
    spec = SparseConv2d(8, 8, 3, padding=1).spec
    pick = conv_module.pick_layout
    assert pick(spec, 64, 32) == "width"     # wide images: 2 junk columns in 34
    assert pick(spec, 2, 16) == "batch"      # 2 in 18 is too many
    assert pick(spec, 1, 8) == "width"       # batch 1: one-row vectors in the batch layout
    assert pick(SparseConv2d(8, 8, 1).spec, 64, 4) == "width"             # 1x1: no junk columns
    assert pick(SparseConv2d(8, 8, 3, groups=8).spec, 64, 8) == "width"   # depthwise
    assert pick(SparseConv2d(8, 8, 3, stride=2).spec, 8, 32) == "batch"   # strided
    assert pick(SparseConv2d(8, 8, 3, stride=2).spec, 1, 32) == "width"   # ... but batch 1


@pytest.mark.parametrize("kernel,padding", [(1, 0), (3, 1)])
def test_conv_saves_the_input_itself(layout, kernel, padding):
    """Both layouts save the input itself (not a private padded copy, which would keep
    an extra activation alive): modifying x before backward must fail as it does for
    nn.Conv2d, never give a silently wrong gradient."""
    m = SparseConv2d(4, 6, kernel, padding=padding, sparsity=0.5)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    base = x * 1.0
    y = m(base)
    base.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("stride,top,left,phase_hw", [
    ((1, 1), 1, 2, (7, 9)), ((1, 1), 0, 0, (3, 4)), ((1, 1), -1, -2, (2, 3)), ((1, 1), 9, 0, (3, 3)),
    ((2, 2), 1, 1, (3, 3)), ((2, 1), 0, 2, (2, 7)), ((3, 2), 2, 1, (2, 3)), ((2, 3), 0, 0, (1, 1))])
def test_split_and_merge_phases(stride, top, left, phase_hw):
    """split_phases against a per-pixel reference; merge_phases gives the image back."""
    (sh, sw), (hs, ws) = stride, phase_hw
    src = torch.randn(5, 3, 4)
    dst = torch.full((5, sh, sw, hs, ws), float("nan"))
    _C.split_phases(src.numpy(), dst.numpy(), top, left, 2)
    expected = torch.zeros_like(dst)
    for a in range(sh):
        for b in range(sw):
            for i in range(hs):
                for j in range(ws):
                    y, x = i * sh + a - top, j * sw + b - left
                    if 0 <= y < 3 and 0 <= x < 4:
                        expected[:, a, b, i, j] = src[:, y, x]
    assert torch.equal(dst, expected)
    if top >= 0 and left >= 0 and (2 + top) // sh < hs and (3 + left) // sw < ws:
        back = torch.full_like(src, float("nan"))
        _C.merge_phases(dst.numpy(), back.numpy(), top, left, 2)
        assert torch.equal(back, src)


def test_split_and_merge_phases_reject_bad_shapes():
    src, phases = torch.zeros(5, 3, 4), torch.zeros(5, 1, 1, 3, 4)
    with pytest.raises(ValueError, match="same number of planes"):
        _C.split_phases(src.numpy(), torch.zeros(4, 1, 1, 3, 4).numpy(), 0, 0, 1)
    with pytest.raises(ValueError, match="do not fit"):
        _C.merge_phases(phases.numpy(), src.numpy(), 1, 0, 1)
    with pytest.raises(ValueError, match="top, left >= 0"):
        _C.merge_phases(phases.numpy(), src.numpy(), -1, 0, 1)
