"""Sparse layers that store their weights in bfloat16/float16 (half the bytes of values,
gradients and optimizer state) and compute in float32; float64 storage is the float64
correctness path. The oracle is the dense layer computing in float32 from the same
stored weights."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprop
from sparseprop import SparseConv2d, SparseLinear
from sparseprop.pruning import GradualMagnitudePruner

HALF = [torch.bfloat16, torch.float16]


def _dense_masked_linear(layer):
    bias = None if layer.bias is None else layer.bias.detach().float()
    return layer.weight.detach().float(), bias


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 7])
def test_linear_half_storage_matches_float32_compute(dtype, sparsity, batch):
    torch.manual_seed(0)
    layer = SparseLinear(24, 10, sparsity=sparsity, dtype=dtype)
    assert layer.values.dtype == layer.bias.dtype == dtype
    w, b = _dense_masked_linear(layer)
    x = torch.randn(batch, 24)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wb = w.clone().requires_grad_()
    y = layer(xa)
    y_ref = F.linear(xb, wb, b)
    assert y.dtype == torch.float32  # float32 input: float32 result
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    assert layer.values.grad.dtype == dtype and layer.bias.grad.dtype == dtype
    ref_values_grad = layer.pattern.gather(wb.grad).to(dtype)
    torch.testing.assert_close(layer.values.grad, ref_values_grad)
    torch.testing.assert_close(layer.bias.grad, g.sum(0).to(dtype))


@pytest.mark.parametrize("dtype", HALF)
def test_conv_half_storage_matches_float32_compute(dtype):
    torch.manual_seed(0)
    conv = SparseConv2d(4, 6, 3, stride=2, padding=1, sparsity=0.7, dtype=dtype)
    assert conv.values.dtype == dtype
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    y = conv(x)
    ref = F.conv2d(x, conv.weight.detach().float(), conv.bias.detach().float(), 2, 1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert conv.values.grad.dtype == dtype and torch.isfinite(conv.values.grad.float()).all()


@pytest.mark.parametrize("dtype", HALF + [torch.float64])
def test_sparsify_densify_keep_the_model_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 5 * 5, 4)).to(dtype)
    report = sparseprop.sparsify(model, sparsity=0.8, return_report=True)
    assert report.converted == ["0", "3"]
    assert model[0].values.dtype == model[3].values.dtype == dtype
    x = torch.randn(2, 3, 5, 5, dtype=dtype)
    y = model(x)
    assert y.dtype == dtype
    dense = sparseprop.densify(copy.deepcopy(model))
    assert dense[3].weight.dtype == dtype and isinstance(dense[3], nn.Linear)
    torch.testing.assert_close(dense[3].weight, model[3].weight.detach(), rtol=0, atol=0)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype in HALF else {}
    torch.testing.assert_close(dense(x), y, **tol)


def test_state_dict_round_trip_keeps_bf16_and_casts_into_float32():
    torch.manual_seed(0)
    layer = SparseLinear(16, 8, sparsity=0.75, dtype=torch.bfloat16)
    state = layer.state_dict()
    assert state["values"].dtype == torch.bfloat16
    same = SparseLinear(16, 8, sparsity=0.1, dtype=torch.bfloat16)
    same.load_state_dict(state)
    assert same.values.dtype == torch.bfloat16 and torch.equal(same.values, layer.values)
    wide = SparseLinear(16, 8, sparsity=0.1)
    wide.load_state_dict(state)  # like nn.Linear: the module keeps its own dtype
    assert wide.values.dtype == torch.float32
    assert torch.equal(wide.values, layer.values.float())


def test_bf16_model_trains_with_adamw_and_a_pruner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.9, end_step=6,
                                    frequency=2, sparse_from=0.5)
    x = torch.randn(64, 32, dtype=torch.bfloat16)
    target = torch.randint(0, 4, (64,))
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        opt.step()
        pruner.step()
        losses.append(loss.item())
    sparse = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(sparse) == 2
    for m in sparse:
        assert m.values.dtype == torch.bfloat16 and abs(m.sparsity - 0.9) < 0.02
        for state in opt.state[m.values].values():
            if torch.is_tensor(state) and state.dim() == 1:
                assert state.shape == m.values.shape
    assert losses[-1] < losses[0]


def test_half_storage_halves_the_values_bytes():
    a = SparseLinear(256, 256, sparsity=0.9)
    b = SparseLinear(256, 256, sparsity=0.9, dtype=torch.bfloat16)
    assert b.values.nbytes * 2 == a.values.nbytes


def test_unsupported_storage_dtype_is_refused():
    with pytest.raises(TypeError, match="SparseConv2d stores its weights as .* got dtype=torch.int8"):
        SparseConv2d(2, 2, 3, dtype=torch.int8)


def test_hf_bf16_checkpoint_comes_back_bf16_and_identical(tmp_path):
    transformers = pytest.importorskip("transformers")
    from sparseprop import hf

    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).to(torch.bfloat16).eval()
    sparseprop.sparsify(model, sparsity=0.8)
    ids = torch.randint(0, 50, (2, 7))
    ref = model(ids).logits
    model.save_pretrained(tmp_path)
    loaded = hf.from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path), dtype=torch.bfloat16)
    sparse = [m for m in loaded.modules() if hasattr(m, "values")]
    assert sparse and {m.values.dtype for m in sparse} == {torch.bfloat16}
    torch.testing.assert_close(loaded(ids).logits, ref, rtol=0, atol=0)
