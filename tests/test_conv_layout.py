"""The layout-resident conv path (sparseprop.conv.chwn, sparseprop.conv.batchnorm): sparse
convolutions hand CHWN-strided activations to BatchNorm/ReLU/adds/pools and to each other. Oracle: the
dense masked model (``densify`` of a copy), for outputs, input and weight gradients and
BatchNorm running statistics, over the stride/padding/groups combinations of
ResNet/VGG/MobileNet blocks, train and eval mode, CHWN-strided inputs mixed with NCHW."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprop
from sparseprop import SparseConv2d
from sparseprop import conv as conv_module
from sparseprop.conv import (LayoutBatchNorm2d, from_phases_chwn, is_chwn, layout_resident_batchnorms,
                             phases_chwn, to_chwn)
from sparseprop import densify
from sparseprop.benchmarks.resnet_models import BasicBlock, sparsify_convs


@pytest.fixture(autouse=True)
def single_threaded_oracle():
    sparseprop.set_num_threads(sparseprop.get_num_threads())
    torch.set_num_threads(1)
    yield


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-relative error of a against the reference b."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def chwn_randn(*shape, generator=None) -> torch.Tensor:
    return to_chwn(torch.randn(*shape, generator=generator))


# --------------------------------------------------------------------------------------
# the layout helpers
# --------------------------------------------------------------------------------------
def test_is_chwn():
    x = torch.randn(4, 3, 5, 6)
    assert not is_chwn(x)
    assert is_chwn(to_chwn(x))
    assert not is_chwn(x.contiguous(memory_format=torch.channels_last))
    assert not is_chwn(torch.randn(1, 3, 5, 6).permute(0, 1, 2, 3))  # batch 1: NCHW wins
    assert torch.equal(to_chwn(x), x)


@pytest.mark.parametrize("stride,top,left", [((1, 1), 1, 1), ((2, 2), 1, 1), ((2, 2), 0, 0),
                                             ((2, 3), 2, 1), ((3, 2), 0, 2)])
def test_phases_match_native_phase_layout(stride, top, left):
    x = torch.randn(3, 4, 7, 9)
    sh, sw = stride
    hs, ws = -(-(7 + 2 * top) // sh), -(-(9 + 2 * left) // sw)
    ref = conv_module.phase_layout(x, stride, top, left, hs, ws)
    for src in (x, to_chwn(x)):
        assert torch.equal(phases_chwn(src, stride, top, left, hs, ws), ref)
    back = from_phases_chwn(ref, 7, 9, top, left)
    assert is_chwn(back) and torch.equal(back, x)


# --------------------------------------------------------------------------------------
# one sparse convolution, any input / gradient layout
# --------------------------------------------------------------------------------------
CONVS = [  # (in, out, kernel, stride, padding, groups): the standard blocks' convs
    (8, 8, 3, 1, 1, 1),      # ResNet/VGG 3x3
    (8, 16, 3, 2, 1, 1),     # ResNet downsampling 3x3
    (8, 16, 1, 2, 0, 1),     # ResNet 1x1 shortcut
    (8, 16, 1, 1, 0, 1),     # MobileNet pointwise
    (8, 8, 3, 1, 1, 8),      # MobileNet depthwise
    (8, 8, 3, 2, 1, 8),      # MobileNet strided depthwise
    (8, 12, 3, 1, 1, 2),     # grouped
    (6, 8, 5, 1, 2, 1),      # 5x5 pad 2
]


@pytest.mark.parametrize("layout", ["auto", "batch"])
@pytest.mark.parametrize("in_layout", ["nchw", "chwn"])
@pytest.mark.parametrize("grad_layout", ["nchw", "chwn"])
@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "-".join(map(str, c)))
def test_conv_any_layout_matches_dense(cfg, in_layout, grad_layout, layout):
    cin, cout, k, s, p, g = cfg
    previous = conv_module.set_layout(layout)
    try:
        gen = torch.Generator().manual_seed(1)
        dense = nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, bias=True)
        sparse = SparseConv2d.from_dense(dense, sparsity=0.6)
        ref = sparse.to_dense()
        x = torch.randn(4, cin, 9, 9, generator=gen)
        xs = (to_chwn(x) if in_layout == "chwn" else x.clone()).requires_grad_()
        xd = x.clone().requires_grad_()
        ys, yd = sparse(xs), ref(xd)
        assert ys.shape == yd.shape
        assert rel(ys, yd) < 1e-5
        gy = torch.randn(yd.shape, generator=gen)
        ys.backward(to_chwn(gy) if grad_layout == "chwn" else gy)
        yd.backward(gy)
        assert rel(xs.grad, xd.grad) < 1e-5
        wg = ref.weight.grad.reshape(cout, -1)[sparse.pattern.row_indices(),
                                                 sparse.pattern.indices.long()]
        assert rel(sparse.values.grad, wg) < 1e-5
        assert rel(sparse.bias.grad, ref.bias.grad) < 1e-5
        if in_layout == "chwn" and conv_module.pick_layout(
                sparse.spec, 4, yd.shape[3], True) == "batch":
            assert is_chwn(xs.grad)  # the gradient travels in the input's layout
    finally:
        conv_module.set_layout(previous)


def test_batch_layout_output_is_chwn_and_a_plain_tensor():
    sparse = SparseConv2d(8, 8, 3, padding=1, sparsity=0.5)
    previous = conv_module.set_layout("batch")
    try:
        y = sparse(torch.randn(4, 8, 6, 6))
    finally:
        conv_module.set_layout(previous)
    assert is_chwn(y) and not y._is_view()
    y.relu_()  # in-place ops on the output are allowed (it is not a view)


# --------------------------------------------------------------------------------------
# LayoutBatchNorm2d
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "chwn"])
def test_layout_batchnorm_matches_batchnorm(layout):
    gen = torch.Generator().manual_seed(2)
    ref = nn.BatchNorm2d(6, momentum=0.3)
    bn = layout_resident_batchnorms(copy.deepcopy(nn.Sequential(ref)))[0]
    assert type(bn) is LayoutBatchNorm2d
    assert list(bn.state_dict()) == list(ref.state_dict())
    nn.init.uniform_(ref.weight, 0.5, 1.5, generator=gen)
    bn.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(5, 6, 4, 7, generator=gen) * 3 + 1
        xs = (to_chwn(x) if layout == "chwn" else x.clone()).requires_grad_()
        xd = x.clone().requires_grad_()
        ys, yd = bn(xs), ref(xd)
        assert is_chwn(ys) == (layout == "chwn")
        assert rel(ys, yd) < 1e-5
        gy = torch.randn(yd.shape, generator=gen)
        ys.backward(gy)
        yd.backward(gy)
        assert rel(xs.grad, xd.grad) < 1e-5
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(bn, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    assert rel(bn.weight.grad, ref.weight.grad) < 1e-5
    bn.eval(), ref.eval()
    x = to_chwn(torch.randn(3, 6, 4, 4, generator=gen))
    assert rel(bn(x), ref(x)) < 1e-6


def test_layout_resident_batchnorms_keeps_identity_and_subclasses():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.BatchNorm2d(3), MyBN(3), nn.BatchNorm1d(3))
    params = [id(p) for p in model.parameters()]
    layout_resident_batchnorms(model)
    assert [type(m) for m in model] == [LayoutBatchNorm2d, MyBN, nn.BatchNorm1d]
    assert [id(p) for p in model.parameters()] == params


# --------------------------------------------------------------------------------------
# whole blocks against the dense masked model
# --------------------------------------------------------------------------------------
class VGGBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return F.max_pool2d(x, 2)


class MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise (stride), 1x1 project, residual."""

    def __init__(self, c, stride):
        super().__init__()
        self.stride = stride
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c),
                                    nn.ReLU6(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, stride, 1, groups=2 * c, bias=False),
                                nn.BatchNorm2d(2 * c), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.stride == 1 else y


def _nets():
    torch.manual_seed(3)
    return {
        "resnet-identity": nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1)),
        "resnet-downsample": nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1)),
        "vgg": nn.Sequential(VGGBlock(8, 12), VGGBlock(12, 16)),
        "mobilenet": nn.Sequential(MobileBlock(8, 1), MobileBlock(8, 2), MobileBlock(8, 1)),
    }


def _pairs(net: nn.Module, sparsity: float):
    sparse = layout_resident_batchnorms(sparsify_convs(copy.deepcopy(net), sparsity, skip=()))
    dense = densify(copy.deepcopy(sparse))
    return sparse, dense


def _weight_grads(sparse: nn.Module, dense: nn.Module):
    for (name, s), (_, d) in zip(sparse.named_modules(), dense.named_modules()):
        if isinstance(s, SparseConv2d):
            ref = d.weight.grad.reshape(d.out_channels, -1)[s.pattern.row_indices(),
                                                              s.pattern.indices.long()]
            yield name, s.values.grad, ref


@pytest.mark.parametrize("layout", ["auto", "batch"])
@pytest.mark.parametrize("in_layout", ["nchw", "chwn"])
@pytest.mark.parametrize("name", ["resnet-identity", "resnet-downsample", "vgg", "mobilenet"])
def test_block_train_and_eval_match_dense_masked(name, in_layout, layout):
    previous = conv_module.set_layout(layout)
    try:
        sparse, dense = _pairs(_nets()[name], 0.7)
        gen = torch.Generator().manual_seed(4)
        for step in range(2):  # two steps: the second sees updated running statistics
            x = torch.randn(6, 8, 8, 8, generator=gen)
            xs = (to_chwn(x) if in_layout == "chwn" else x.clone()).requires_grad_()
            xd = x.clone().requires_grad_()
            ys, yd = sparse(xs), dense(xd)
            assert rel(ys, yd) < 1e-4, step
            gy = torch.randn(yd.shape, generator=gen)
            ys.backward(gy)
            yd.backward(gy)
            assert rel(xs.grad, xd.grad) < 1e-4
            for conv_name, got, ref in _weight_grads(sparse, dense):
                assert rel(got, ref) < 1e-3, conv_name
            for (bn_name, s), (_, d) in zip(sparse.named_modules(), dense.named_modules()):
                if isinstance(s, nn.BatchNorm2d):
                    for stat in ("running_mean", "running_var"):
                        assert torch.allclose(getattr(s, stat), getattr(d, stat), rtol=1e-4,
                                              atol=1e-6), (bn_name, stat)
                    # BN weight gradients are sums that nearly cancel: float32 noise
                    # of the two conv implementations shows at the 1e-3 level.
                    assert rel(s.weight.grad, d.weight.grad) < 1e-2, bn_name
            sparse.zero_grad(), dense.zero_grad()
        sparse.eval(), dense.eval()
        x = torch.randn(3, 8, 8, 8, generator=gen)
        with torch.no_grad():
            assert rel(sparse(x), dense(x)) < 1e-4
            assert rel(sparse(to_chwn(x)), dense(x)) < 1e-4
    finally:
        conv_module.set_layout(previous)


def test_mixed_layouts_feed_sparse_and_dense_consumers():
    """A CHWN conv output added to an NCHW tensor, fed to a sparse and a dense conv."""
    gen = torch.Generator().manual_seed(5)
    a = SparseConv2d(4, 6, 3, padding=1, sparsity=0.5)
    b = SparseConv2d(6, 6, 3, stride=2, padding=1, sparsity=0.5)
    c = nn.Conv2d(6, 5, 1)
    da, db = a.to_dense(), b.to_dense()
    x = torch.randn(4, 4, 8, 8, generator=gen)
    skip = torch.randn(4, 6, 8, 8, generator=gen)
    previous = conv_module.set_layout("batch")
    try:
        xs, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
        hs = a(xs) + skip
        hd = da(xd) + skip
        out_s = b(hs).sum() + c(hs).square().sum()
        out_d = db(hd).sum() + c(hd).square().sum()
        assert rel(out_s, out_d) < 1e-5
        out_s.backward()
        gc = c.weight.grad.clone()
        c.zero_grad()
        out_d.backward()
        assert rel(xs.grad, xd.grad) < 1e-5
        assert rel(gc, c.weight.grad) < 1e-5
    finally:
        conv_module.set_layout(previous)


def test_resnet18_layout_is_resident():
    """In the sparse ResNet-18 every activation after the first batch-layout conv stays
    CHWN-strided up to the pooled head."""
    from sparseprop.benchmarks.resnet_models import resnet18_cifar

    model = sparsify_convs(resnet18_cifar(), 0.9)
    seen = {}

    def record(mod, inputs, output, name):
        seen[name] = is_chwn(output)

    for name, m in model.named_modules():
        if name.startswith("layer") and name.count(".") == 1:
            m.register_forward_hook(lambda mod, i, o, name=name: record(mod, i, o, name))
    model(torch.randn(4, 3, 32, 32))
    assert all(seen[f"layer{i}.{j}"] for i in (2, 3, 4) for j in (0, 1)), seen


def test_sparsify_makes_batchnorms_layout_resident_and_densify_undoes_it():
    """sparsify() on a conv net swaps its BatchNorms in (outputs unchanged, the model's
    gradients equal the dense masked model's); densify() leaves plain nn.BatchNorm2d."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in (dense[0], dense[3]):
            m.weight.mul_(torch.rand_like(m.weight) < 0.2)
    sparse = sparseprop.sparsify(copy.deepcopy(dense), types=(nn.Conv2d,))
    assert all(type(m) is LayoutBatchNorm2d for m in (sparse[1], sparse[4]))
    x = torch.randn(6, 8, 10, 10)
    out_d, out_s = dense(x), sparse(x)
    torch.testing.assert_close(out_s, out_d, rtol=1e-4, atol=1e-5)
    out_d.square().sum().backward()
    out_s.square().sum().backward()
    torch.testing.assert_close(sparse[4].weight.grad, dense[4].weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sparse[1].running_var, dense[1].running_var)
    back = sparseprop.densify(sparse)
    assert all(type(m) is nn.BatchNorm2d for m in (back[1], back[4]))
    torch.testing.assert_close(back.eval()(x), dense.eval()(x), rtol=1e-4, atol=1e-5)
