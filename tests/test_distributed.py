"""DistributedDataParallel (gloo, 2 CPU processes) over a sparse model: the same result as
one process on the whole batch."""
from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import sparseprop

WORLD = 2
STEPS = 4
LR = 0.1

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return nn.Sequential(
        sparseprop.SparseConv2d(2, 4, 3, padding=1, sparsity=0.6, generator=g), nn.ReLU(),
        nn.Flatten(),
        sparseprop.SparseLinear(4 * 6 * 6, 32, sparsity=0.9, generator=g), nn.ReLU(),
        sparseprop.SparseLinear(32, 16, sparsity=0.7, generator=g), nn.Tanh(),
        nn.Linear(16, 3))


def _batch():
    g = torch.Generator().manual_seed(123)
    return torch.randn(8 * WORLD, 2, 6, 6, generator=g), torch.randn(8 * WORLD, 3, generator=g)


def _train(model: nn.Module, x, y) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # no momentum
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _swap_masks(model: nn.Module):
    """A pattern change that keeps every layer's nnz (RigL-style), decided by positions
    only, so all ranks and the reference make the same one."""
    masks = {}
    for name in ("0", "3"):
        old = model.get_submodule(name).pattern.mask()
        alive, dead = old.nonzero(), (~old).nonzero()
        new = old.clone()
        new[tuple(alive[::7][:5].t())] = False
        new[tuple(dead[::5][:5].t())] = True
        masks[name] = new.view(model.get_submodule(name).weight_shape)
    return masks


def _train_with_pattern_change(model: nn.Module, wrapped: nn.Module, x, y) -> None:
    """Two steps, a pattern change with SGD-momentum state remapped, two more steps."""
    opt = torch.optim.SGD(wrapped.parameters(), lr=LR, momentum=0.9)
    for step in range(4):
        if step == 2:
            sparseprop.apply_masks(model, _swap_masks(model), optimizer=opt)
        opt.zero_grad()
        nn.functional.mse_loss(wrapped(x), y).backward()
        opt.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        x, y = _batch()
        xs, ys = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        # (a) every rank builds the same model; buffers are not re-broadcast each step
        model = _model(seed=0)
        _train(DDP(model, broadcast_buffers=False), xs, ys)
        # (b) rank 1 starts from other random patterns and values: DDP's initial broadcast
        # of parameters and buffers (indptr/indices included) makes it rank 0's model
        other = _model(seed=0 if rank == 0 else 77)
        _train(DDP(other), xs, ys)
        # (c) a pattern change that keeps each layer's nnz, in place under DDP
        changed = _model(seed=0)
        _train_with_pattern_change(changed, DDP(changed, broadcast_buffers=False), xs, ys)
        torch.save({"a": model.state_dict(), "b": other.state_dict(), "c": changed.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("DDP workers did not finish within 120 s")

    x, y = _batch()
    reference = _model(seed=0)
    _train(reference, x, y)
    changed = _model(seed=0)
    _train_with_pattern_change(changed, changed, x, y)
    references = {"a": reference.state_dict(), "b": reference.state_dict(),
                  "c": changed.state_dict()}
    assert not torch.equal(references["c"]["0.indices"], references["a"]["0.indices"])
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for run, expected in references.items():
            sd = result[run]
            assert set(sd) == set(expected)
            for key, value in expected.items():
                if value.dtype.is_floating_point:
                    torch.testing.assert_close(sd[key], value, rtol=1e-5, atol=1e-6,
                                               msg=lambda m: f"rank {rank} run {run} {key}: {m}")
                else:
                    assert torch.equal(sd[key], value), f"rank {rank} run {run} {key}"
    # training moved the parameters (the comparison is not trivially true)
    assert not torch.equal(references["a"]["3.values"], _model(seed=0).state_dict()["3.values"])
