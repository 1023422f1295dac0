"""Train a small GPT-style character model on Python's own standard library, dense vs sparse.

The text is the source of the standard library (``*.py`` beside the ``os`` module): it ships
with every Python, so nothing is downloaded. The same model, from the same initialization
and batch order, is trained twice: dense, and with every attention and MLP projection
(qkv, out, fc1, fc2) pruned to ``--sparsity`` by magnitude at step 0 and trained as a
``SparseLinear`` (embeddings, norms and the output head stay dense). Both train in one process, alternating
steps, so machine load hits them alike (tokens/s from the median step time); peak memory (max
RSS) comes from a short separate run of each variant alone. Prints tokens/s, the final
training loss, the held-out loss and peak RSS for both, and the speedup.

    python examples/char_gpt.py                   # under a minute on 2 quiet cores
    SPARSEPROP_ISA=avx2 python examples/char_gpt.py --threads 2
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

PROJECTIONS = r".*\.(qkv|out|fc1|fc2)"  # the layers made sparse


def load_text(max_chars: int) -> str:
    """Concatenated standard-library sources, sorted by path (deterministic), ASCII only."""
    stdlib = os.path.dirname(os.__file__)
    parts, total = [], 0
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        with open(path, encoding="utf-8", errors="ignore") as f:
            text = f.read().encode("ascii", errors="ignore").decode()
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, context: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def batches(data: torch.Tensor, steps: int, batch: int, context: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, len(data) - context - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(context + 1)
        chunk = data[idx]
        yield chunk[:, :-1], chunk[:, 1:]


def build(args, variant: str) -> nn.Module:
    """The model, from seed ``args.seed``: dense, or with its projections made sparse."""
    import sparseprop

    torch.manual_seed(args.seed)
    model = CharGPT(128, args.d_model, args.layers, args.heads, args.context)
    if variant == "sparse":
        model = sparseprop.sparsify(model, args.sparsity, names=PROJECTIONS)
    return model


def load_data(args):
    data = torch.tensor(list(load_text(args.chars).encode("ascii")), dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


def train_interleaved(args) -> dict:
    """Train dense and sparse in this process, alternating steps (same batches), so a change
    in machine load hits both alike; step time is the median over the timed steps."""
    import sparseprop

    train, val = load_data(args)
    runs = {v: dict(model=build(args, v), losses=[], times=[]) for v in ("dense", "sparse")}
    for run in runs.values():
        run["opt"] = torch.optim.AdamW(run["model"].parameters(), lr=args.lr, weight_decay=0.01)
    for step, (x, y) in enumerate(batches(train, args.steps, args.batch, args.context, args.seed)):
        order = ("dense", "sparse") if step % 2 == 0 else ("sparse", "dense")
        for variant in order:  # alternate who goes first
            run = runs[variant]
            start = time.perf_counter()
            run["opt"].zero_grad(set_to_none=True)
            loss = F.cross_entropy(run["model"](x).flatten(0, 1), y.flatten())
            loss.backward()
            run["opt"].step()
            if step >= args.warmup:  # first steps pay for allocation and pattern setup
                run["times"].append(time.perf_counter() - start)
            run["losses"].append(loss.item())
    out = {}
    for variant, run in runs.items():
        model = run["model"].eval()
        with torch.no_grad():
            val_losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                          for x, y in batches(val, 8, args.batch, args.context, args.seed + 1)]
        tail = run["losses"][-max(1, len(run["losses"]) // 5):]
        out[variant] = dict(
            tokens_per_s=args.batch * args.context / statistics.median(run["times"]),
            train_loss=sum(tail) / len(tail), val_loss=sum(val_losses) / len(val_losses),
            params=sum(p.numel() for p in model.parameters()))
    out["isa"] = sparseprop.get_isa()
    return out


def peak_rss_mb(args, variant: str) -> float:
    """Peak RSS of a short training run of one variant alone (``--mem-steps`` steps)."""
    train, _ = load_data(args)
    model = build(args, variant)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for x, y in batches(train, args.mem_steps, args.batch, args.context, args.seed):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    p.add_argument("--mem-steps", type=int, default=4,
                   help="steps of the separate per-variant runs that measure peak RSS")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--chars", type=int, default=2_000_000, help="characters of text to use")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-of", choices=("dense", "sparse"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    if args.d_model % args.heads:
        p.error("--d-model must be a multiple of --heads")
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    return args


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:  # child process: one variant alone, for its own peak RSS
        print(json.dumps(dict(peak_rss_mb=peak_rss_mb(args, args.memory_of))))
        return
    rss = {}
    for variant in ("dense", "sparse"):
        out = subprocess.run([sys.executable, __file__, *argv, "--memory-of", variant],
                             check=True, capture_output=True, text=True).stdout
        rss[variant] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    res = train_interleaved(args)
    print(f"char GPT: d={args.d_model} layers={args.layers} context={args.context} "
          f"batch={args.batch} steps={args.steps}; ISA {res['isa']}, {args.threads} threads")
    print(f"{'variant':10} {'params':>9} {'tokens/s':>10} {'train loss':>10} {'val loss':>9} "
          f"{'peak RSS':>9}")
    for variant in ("dense", "sparse"):
        r = res[variant]
        label = variant if variant == "dense" else f"sparse {args.sparsity:g}"
        print(f"{label:10} {r['params']:>9} {r['tokens_per_s']:>10.0f} {r['train_loss']:>10.3f} "
              f"{r['val_loss']:>9.3f} {rss[variant]:>7.0f}MB")
    speedup = res["sparse"]["tokens_per_s"] / res["dense"]["tokens_per_s"]
    print(f"sparse/dense tokens/s: {speedup:.2f}x (uniform-ln(128) loss is {math.log(128):.2f})")


if __name__ == "__main__":
    main()
