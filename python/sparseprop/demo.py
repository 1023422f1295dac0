"""The main job: train the same MLP dense and sparse on scikit-learn's digits and compare.

Run ``python -m sparseprop`` (no arguments needed). The sparse model starts
from the dense model's initialization, magnitude-pruned to ``--sparsity`` in
its hidden layers, and trains on the sparse kernels; the dense model trains
with nn.Linear. Both see the same batches in the same order.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import List, Optional, Tuple

import torch
from torch import nn

from . import SparseLinear, get_isa, set_num_threads


def load_digits_split(seed: int) -> Tuple[torch.Tensor, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs scikit-learn: pip install 'sparseprop[demo]'") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def build_mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def sparsify_hidden(model: nn.Sequential, sparsity: float) -> nn.Sequential:
    """Copy of ``model`` whose hidden-to-hidden layer (nearly all of the compute)
    is a magnitude-pruned SparseLinear. The small input and output layers stay
    dense: at 95% a 64-input unit would keep about 3 inputs.

    The kept weights are scaled by 1/sqrt(density) so each unit's pre-activation
    keeps the variance it had with its full fan-in (as sparse-from-scratch
    methods such as SET and RigL do); without it a 95%-sparse net starts
    with vanishing activations and trains slowly."""
    sparse = copy.deepcopy(model)
    for i in (2,):
        layer = SparseLinear.from_dense(model[i], sparsity=sparsity)
        if layer.nnz:
            with torch.no_grad():
                layer.values.mul_((1.0 - layer.sparsity) ** -0.5)
        sparse[i] = layer
    return sparse


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return 100.0 * correct


def train(model: nn.Module, data, epochs: int, batch_size: int, lr: float, seed: int, label: str):
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    epoch_times: List[float] = []
    accs: List[float] = []
    steps = (len(y_train) + batch_size - 1) // batch_size
    interactive = sys.stdout.isatty()  # redraw the bar only on a terminal
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=gen)
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            if interactive or step == steps - 1:
                done = int(20 * (step + 1) / steps)
                print(f"\r  {label:>6} epoch {epoch + 1:>2}/{epochs} [{'#' * done}{'.' * (20 - done)}] "
                      f"loss {loss.item():.3f}", end="", flush=True)
        epoch_times.append(time.perf_counter() - start)
        accs.append(accuracy(model, x_test, y_test))
        print(f"  test acc {accs[-1]:5.1f}%  {epoch_times[-1]:.2f}s", flush=True)
    return epoch_times, accs


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters plus the index buffers a sparse layer needs."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for name, b in model.named_buffers()
                 if name.rsplit(".", 1)[-1] in ("indptr", "indices"))
    return total


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparseprop", description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.95, help="sparsity of the hidden-to-hidden layer (default 0.95)")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden width (default 4096)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and sparseprop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    data = load_digits_split(args.seed)
    dense = build_mlp(data[0].shape[1], args.hidden, 10)
    sparse = sparsify_hidden(dense, args.sparsity)
    print(f"digits: {len(data[1])} train / {len(data[3])} test; MLP 64-{args.hidden}-{args.hidden}-10; "
          f"hidden-to-hidden sparsity {args.sparsity:.0%}; ISA {get_isa()}; {torch.get_num_threads()} threads")

    dense_times, dense_accs = train(dense, data, args.epochs, args.batch_size, args.lr, args.seed, "dense")
    sparse_times, sparse_accs = train(sparse, data, args.epochs, args.batch_size, args.lr, args.seed, "sparse")

    # Skip the first epoch (warm-up) when there is more than one.
    def per_epoch(times: List[float]) -> float:
        kept = times[1:] if len(times) > 1 else times
        return sorted(kept)[len(kept) // 2]

    d_t, s_t = per_epoch(dense_times), per_epoch(sparse_times)
    d_mem, s_mem = parameter_bytes(dense), parameter_bytes(sparse)
    print()
    print(f"{'':8}{'test acc':>10}{'s/epoch':>10}{'params MB':>11}")
    print(f"{'dense':8}{dense_accs[-1]:>9.1f}%{d_t:>10.3f}{d_mem / 1e6:>11.2f}")
    print(f"{'sparse':8}{sparse_accs[-1]:>9.1f}%{s_t:>10.3f}{s_mem / 1e6:>11.2f}")
    print(f"speedup {d_t / s_t:.2f}x per epoch, {d_mem / s_mem:.1f}x smaller parameters")
    print("per-layer sparsity: " + ", ".join(
        f"{name} {m.sparsity:.1%}" for name, m in sparse.named_modules() if isinstance(m, SparseLinear)))
    return 0
