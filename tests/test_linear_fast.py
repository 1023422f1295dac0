"""The short eager path of SparseLinear (linear_fast.py): taken for plain float32 2-D
calls, equal to the dense masked layer in output and every gradient, and as safe as
the general path against patterns edited behind its back."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import linear_fast


def _pair(rows=20, cols=30, sparsity=0.7, bias=True):
    torch.manual_seed(0)
    sparse = sparseprop.SparseLinear(cols, rows, bias=bias, sparsity=sparsity)
    return sparse, sparse.to_dense()


def _check_against_dense(sparse, dense, x):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = sparse(xa), dense(xb)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    assert xa.grad.is_contiguous()
    torch.testing.assert_close(sparse.values.grad, sparse.pattern.gather(dense.weight.grad),
                               rtol=1e-5, atol=1e-5)
    if sparse.bias is not None:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1, 2, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_dense(isa, batch, bias):
    sparse, dense = _pair(bias=bias)
    _check_against_dense(sparse, dense, torch.randn(batch, 30))


def test_taken_for_plain_calls_only(monkeypatch):
    sparse, _ = _pair()
    taken = []
    real = linear_fast._FastLinearFn.forward

    def spy(ctx, *args):
        taken.append(1)
        return real(ctx, *args)

    monkeypatch.setattr(linear_fast._FastLinearFn, "forward", staticmethod(spy))
    monkeypatch.setattr(linear_fast, "_apply", linear_fast._direct_apply())
    sparse(torch.randn(3, 30))
    sparse(torch.randn(1, 30, requires_grad=True)).sum().backward()
    assert len(taken) == 2
    sparse(torch.randn(2, 3, 30))  # N-D: the general path
    sparse(torch.randn(3, 30).double().float().to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse(torch.randn(3, 30))
    assert len(taken) == 2


def test_transposed_input_and_output_chain(isa):
    """A sparse layer's output (a transposed view) feeds the next one without a copy."""
    torch.manual_seed(0)
    a, b = sparseprop.SparseLinear(30, 20, sparsity=0.6), sparseprop.SparseLinear(20, 10, sparsity=0.5)
    net = nn.Sequential(a, nn.ReLU(inplace=True), b)
    ref = nn.Sequential(a.to_dense(), nn.ReLU(), b.to_dense())
    x = torch.randn(6, 30)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = net(xa), ref(xb)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)


def test_inplace_edit_between_steps_is_seen():
    """An edit through a numpy view bypasses torch's version counter; the fused checksum
    still notices it and the next call runs on the new (validated) pattern."""
    sparse, _ = _pair()
    x = torch.randn(1, 30)
    sparse(x)
    row0 = sparse.indices[: int(sparse.indptr[1])].numpy()
    free = sorted(set(range(30)) - set(row0.tolist()))[0]
    row0[0] = free  # still a valid pattern (sorted? re-sort the row)
    row0.sort()
    y = sparse(x)
    torch.testing.assert_close(y, x @ sparse.weight.t() + sparse.bias, rtol=1e-5, atol=1e-6)
    assert int(sparse.indices[: int(sparse.indptr[1])].numpy().tolist().count(free)) == 1


def test_storage_swap_between_steps_is_seen():
    sparse, _ = _pair()
    x = torch.randn(1, 30)
    sparse(x)
    mask = torch.rand(20, 30, generator=torch.Generator().manual_seed(5)) < 0.2
    p = sparseprop.CSRPattern.from_mask(mask)
    keep_values = sparse.values.detach().clone()
    sparse.indices.data = p.indices.clone()
    sparse.indptr.data = p.indptr.clone()
    with torch.no_grad():
        sparse.values.data = torch.randn(p.nnz)
    y = sparse(x)
    assert sparse.nnz == p.nnz and not torch.equal(sparse.values.detach()[:5], keep_values[:5])
    torch.testing.assert_close(y, x @ sparse.weight.t() + sparse.bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 4])
def test_edit_between_forward_and_backward_raises(batch):
    sparse, _ = _pair()
    y = sparse(torch.randn(batch, 30, requires_grad=True))
    sparse.indptr.numpy()[1] += 1  # a corrupt pattern: would read outside its rows
    with pytest.raises(RuntimeError, match="edited in place"):
        y.sum().backward()


def test_corrupt_pattern_is_an_error_not_a_crash():
    sparse, _ = _pair()
    sparse(torch.randn(1, 30))
    sparse.indices.numpy()[0] = 10**6  # out of range, behind torch's back
    with pytest.raises(ValueError):
        sparse(torch.randn(1, 30))


def test_bench_overhead_line(capsys):
    from sparseprop import bench

    assert bench.main(["--overhead", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "per-call overhead: 64x64 batch 1" in out and "sparse/dense" in out and "isa " in out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("needs", ["all", "input only", "values only"])
def test_batch1_backward_large_threaded(isa, threads, needs):
    """Batch 1 computes both gradients in one fused pass, split over threads once the
    pattern is large (here 131k nonzeros)."""
    sparse, dense = _pair(rows=512, cols=512, sparsity=0.5)
    x = torch.randn(1, 512)
    xa, xb = x.clone().requires_grad_(needs != "values only"), x.clone().requires_grad_()
    sparse.values.requires_grad_(needs != "input only")
    cfg = sparseprop.config()
    saved = None if cfg["threads_follow_torch"] else cfg["num_threads"]
    sparseprop.set_num_threads(threads)
    try:
        g = torch.randn(1, 512)
        sparse(xa).backward(g)
    finally:
        sparseprop.set_num_threads(saved)
    dense(xb).backward(g)
    if needs != "values only":
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    if needs != "input only":
        torch.testing.assert_close(sparse.values.grad, sparse.pattern.gather(dense.weight.grad),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.bias.grad, dense.bias.grad)
