"""sparse_from="auto" (each layer's measured switch point, cached) and the pruner's fast
pattern edits (dense -> sparse switch, in-form pruning, masked dense steps), all checked
against the plain masked dense path."""
import json

import pytest
import torch
from torch import nn

from sparseprop import SparseLinear, pruning
from sparseprop.pruning import switch_point as sp


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache directory and no pinned switch point."""
    monkeypatch.setenv("SPARSEPROP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SPARSEPROP_SPARSE_FROM", raising=False)
    sp.clear_switch_point_cache()
    yield
    sp.clear_switch_point_cache()


def _count_measurements(monkeypatch, value):
    calls = []

    def fake(probe, shape):
        calls.append((type(probe).__name__, tuple(shape)))
        return value, True
    monkeypatch.setattr(sp, "_measure", fake)
    return calls


# --- the switch point itself ---------------------------------------------------------------
def test_measured_switch_point_is_in_range_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "_NOISY", float("inf"))  # a busy machine must not skip the file
    layer = nn.Linear(256, 256)
    value = sp.switch_point(layer, (32, 256))
    assert sp.FLOOR <= value <= sp.CEILING
    saved = json.loads((tmp_path / "switch_points.json").read_text())
    assert list(saved.values()) == [value]
    key = next(iter(saved))
    assert "linear 256x256" in key and "in(32, 256)" in key


def test_cached_in_process_and_on_disk(monkeypatch, tmp_path):
    calls = _count_measurements(monkeypatch, 0.66)
    layer = nn.Linear(64, 128)
    assert sp.switch_point(layer, (16, 64)) == 0.66
    assert sp.switch_point(layer, (16, 64)) == 0.66
    assert len(calls) == 1
    sp.clear_switch_point_cache()  # a new process: read back from the file
    assert sp.switch_point(layer, (16, 64)) == 0.66 and len(calls) == 1
    assert sp.switch_point(layer, (32, 64)) == 0.66 and len(calls) == 2  # another batch
    # the probe is a slice of the layer with the layer's batch
    assert calls[0] == ("Linear", (16, 64))
    sp.clear_switch_point_cache(disk=True)
    assert not (tmp_path / "switch_points.json").exists()


def test_big_layers_are_probed_on_a_slice(monkeypatch):
    calls = []
    monkeypatch.setattr(sp, "_measure", lambda probe, shape: calls.append(
        (tuple(probe.weight.shape), tuple(shape))) or (0.6, True))
    sp.switch_point(nn.Linear(300, 4096), (8, 5, 300))  # (*, in): batch = 40 rows
    sp.switch_point(nn.Conv2d(64, 512, 3, padding=1), (64, 64, 8, 8))
    assert calls[0] == ((2048, 300), (40, 300))
    assert calls[1] == ((128, 64, 3, 3), (16, 64, 8, 8))


def test_noisy_measurement_is_used_but_not_saved(monkeypatch, tmp_path):
    monkeypatch.setattr(sp, "_measure", lambda probe, shape: (0.9, False))
    assert sp.switch_point(nn.Linear(8, 8), (4, 8)) == 0.9
    assert not (tmp_path / "switch_points.json").exists()


def test_corrupt_cache_file_is_ignored(monkeypatch, tmp_path):
    (tmp_path / "switch_points.json").write_text("{not json")
    calls = _count_measurements(monkeypatch, 0.8)
    assert sp.switch_point(nn.Linear(8, 8), (4, 8)) == 0.8 and len(calls) == 1
    assert json.loads((tmp_path / "switch_points.json").read_text())  # rewritten


def test_pinned_by_environment_and_bad_values(monkeypatch):
    calls = _count_measurements(monkeypatch, 0.6)
    monkeypatch.setenv("SPARSEPROP_SPARSE_FROM", "0.75")
    assert sp.switch_point(nn.Linear(8, 8), (4, 8)) == 0.75
    assert sp.resolve_sparse_from("auto", nn.Linear(8, 8), None, 0.1) == 0.75
    monkeypatch.setenv("SPARSEPROP_SPARSE_FROM", "lots")
    with pytest.raises(ValueError, match="SPARSEPROP_SPARSE_FROM must be a number"):
        sp.switch_point(nn.Linear(8, 8), (4, 8))
    monkeypatch.setenv("SPARSEPROP_SPARSE_FROM", "1.5")
    with pytest.raises(ValueError, match=r"SPARSEPROP_SPARSE_FROM must be in \[0, 1\]"):
        sp.switch_point(nn.Linear(8, 8), (4, 8))
    assert calls == []


def test_resolve_measures_only_when_the_answer_is_open(monkeypatch):
    calls = _count_measurements(monkeypatch, 0.6)
    layer = nn.Linear(8, 8)
    assert sp.resolve_sparse_from(0.3, layer, (4, 8), 0.9) == 0.3
    assert sp.resolve_sparse_from(None, layer, (4, 8), 0.9) is None
    assert sp.resolve_sparse_from("auto", layer, (4, 8), 0.2) == sp.FLOOR
    assert sp.resolve_sparse_from("auto", layer, (4, 8), 0.995) == sp.CEILING
    assert sp.resolve_sparse_from("auto", layer, None, 0.8) == sp.FALLBACK
    assert calls == []
    assert sp.resolve_sparse_from("auto", layer, (4, 8), 0.8) == 0.6 and len(calls) == 1


def test_bad_sparse_from_is_rejected():
    with pytest.raises(ValueError, match="sparse_from must be a number in \\[0, 1\\], None or 'auto'"):
        pruning.MagnitudePruner(nn.Sequential(nn.Linear(4, 4)), sparsity=0.5, sparse_from="fast")


# --- "auto" in a pruner ------------------------------------------------------------------
def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                         nn.Linear(48, 4))


def test_auto_switches_at_the_measured_point_for_the_training_batch(monkeypatch):
    calls = _count_measurements(monkeypatch, 0.6)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = pruning.MagnitudePruner(model, opt, sparsity=0.0, layers=["2"])
    assert pruner.sparse_from == "auto"
    layer = pruner.layers["2"]
    model(torch.randn(32, 16)).sum().backward()  # a training batch of 32
    model(torch.randn(5, 16)).sum().backward()   # a short last batch does not count
    with torch.no_grad():
        model(torch.randn(500, 16))              # nor does evaluation
    assert tuple(layer.input_shape) == (32, 48)
    pruner.prune_to(0.55)  # below the point: masked dense
    assert isinstance(model[2], nn.Linear) and layer.dense_mask is not None
    pruner.prune_to(0.65)  # above it: sparse kernels
    assert isinstance(model[2], SparseLinear)
    assert calls == [("Linear", (32, 48))]  # measured once
    model(torch.randn(64, 16)).sum().backward()  # the sparse module is watched too
    assert tuple(layer.input_shape) == (64, 48)
    pruner.remove()
    assert layer._shape_hook is None


def test_scoring_passes_do_not_set_the_batch(monkeypatch):
    _count_measurements(monkeypatch, 0.6)
    model = _mlp()
    x, y = torch.randn(3, 16), torch.tensor([0, 1, 2])
    pruner = pruning.SNIPPruner(model, sparsity=0.9, inputs=x, targets=y, layers=["2"])
    assert pruner.layers["2"].input_shape is None  # SNIP's own batch of 3 is not training
    assert isinstance(model[2], SparseLinear)      # unknown batch: FALLBACK (0.7) applies


# --- fast edits against the masked dense path ------------------------------------------------
def _train(model, opt, pruner, steps, seed=0, sparsities=()):
    g = torch.Generator().manual_seed(seed)
    losses = []
    schedule = dict(sparsities)
    for t in range(steps):
        x = torch.randn(32, 16, generator=g)
        y = torch.randint(0, 4, (32,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        pruner.step()
        if t in schedule:
            pruner.prune_to(schedule[t])
        losses.append(loss.item())
    return torch.tensor(losses)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
])
def test_switch_and_in_form_pruning_match_the_masked_dense_run(make_opt):
    schedule = [(2, 0.4), (4, 0.7), (6, 0.85), (8, 0.93)]
    dense_model, sparse_model = _mlp(), _mlp()
    d_opt, s_opt = make_opt(dense_model.parameters()), make_opt(sparse_model.parameters())
    dense = pruning.MagnitudePruner(dense_model, d_opt, sparsity=0.0, sparse_from=None)
    sparse = pruning.MagnitudePruner(sparse_model, s_opt, sparsity=0.0, sparse_from=0.6)
    d_loss = _train(dense_model, d_opt, dense, 12, sparsities=schedule)
    s_loss = _train(sparse_model, s_opt, sparse, 12, sparsities=schedule)
    torch.testing.assert_close(s_loss, d_loss, rtol=1e-4, atol=1e-5)
    for name in dense.layers:
        d_layer, s_layer = dense.layers[name], sparse.layers[name]
        assert not s_layer.is_dense  # all three became sparse on the way
        assert torch.equal(s_layer.mask(), d_layer.mask())
        torch.testing.assert_close(s_layer.weight(), d_layer.weight(), rtol=1e-4, atol=1e-6)
        # optimizer state went along: the sparse state is the dense one at the kept positions
        d_state = d_opt.state[d_layer.module.weight]
        s_state = s_opt.state[s_layer.module.values]
        pattern = s_layer.module.pattern
        for key, value in d_state.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                torch.testing.assert_close(s_state[key], pattern.gather(value), rtol=1e-4,
                                           atol=1e-6)
                assert bool((value[~d_layer.mask()] == 0).all()), key  # pruned: no state


def test_masked_dense_gradient_is_masked_in_place_and_accumulates():
    model = _mlp()
    pruner = pruning.MagnitudePruner(model, sparsity=0.5, sparse_from=None, layers=["2"])
    layer = pruner.layers["2"]
    mask = layer.mask()
    w = model[2].weight
    x = torch.randn(8, 16)
    model(x).sum().backward()
    first = w.grad.clone()
    assert bool((first[~mask] == 0).all()) and bool((first[mask] != 0).any())
    model(x).sum().backward()  # accumulation keeps the pruned positions at zero
    torch.testing.assert_close(w.grad, 2 * first)
    # the unmasked dense gradient, for reference
    twin = _mlp()
    with torch.no_grad():
        twin[2].weight.copy_(w)
    twin(x).sum().backward()
    torch.testing.assert_close(first, twin[2].weight.grad * mask)


def test_enforcing_a_mask_between_forward_and_backward_is_caught():
    model = _mlp()
    pruner = pruning.MagnitudePruner(model, sparsity=0.5, sparse_from=None, layers=["2"])
    loss = model(torch.randn(4, 16)).sum()
    with torch.no_grad():
        model[2].weight.add_(1.0)  # make the pruned weights nonzero, so enforce() acts
    loss = model(torch.randn(4, 16)).sum()
    pruner.layers["2"].enforce()  # in place: autograd's saved weight is now stale
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
