"""Peak resident memory of ResNet-18 training steps, one model per fresh process.

Peak RSS is a per-process high-water mark, so the sparse and dense models cannot be
told apart inside one process: :func:`peak_rss_mib` starts ``python -m
sparseprop.benchmarks.resnet_rss`` once per model; the child builds the model the ResNet bench
builds (same seed, sparsity, batch, ISA, threads), runs a few SGD steps and prints
its peak RSS (``VmHWM``). Both children pay the same baseline (interpreter, torch, the dense
stem and BN), so the difference is the models' own weights, activations and
scratch buffers.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from typing import Optional

import torch
import torch.nn.functional as F


def peak_rss_mib(kind: str, sparsity: float, batch: int, steps: int, threads: int,
                 isa: Optional[str], seed: int = 0, timeout: float = 600.0) -> float:
    """Peak RSS (MiB) of a fresh process that runs ``steps`` training steps of the
    ``kind`` ('sparse' or 'dense') ResNet-18 at ``sparsity`` and ``batch``."""
    if kind not in ("sparse", "dense"):
        raise ValueError(f"kind must be 'sparse' or 'dense', got {kind!r}")
    cmd = [sys.executable, "-m", "sparseprop.benchmarks.resnet_rss", kind, str(sparsity),
           str(batch), str(steps), str(threads), isa or "", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"peak-RSS child failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _child(kind: str, sparsity: float, batch: int, steps: int, threads: int, isa: str,
           seed: int) -> float:
    import sparseprop
    from .resnet_models import resnet18_cifar, sparsify_convs

    torch.set_num_threads(threads)
    sparseprop.set_num_threads(threads)
    if isa:
        sparseprop.set_isa(isa)
    torch.manual_seed(seed)
    base = resnet18_cifar(num_classes=10)
    # As in bench_resnet18_step: the dense model is the densified sparse one.
    model = sparsify_convs(base, sparsity, skip=("conv1",))
    if kind == "dense":
        model = sparseprop.densify(model)  # in place: the sparse layers are dropped
    model.train()
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    target = torch.randint(0, 10, (batch,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()
    return peak_rss_of_this_process()


def peak_rss_of_this_process() -> float:
    """This process's peak RSS in MiB. Linux's ``ru_maxrss`` carries over ``execve``: a
    child forked from a large parent would report the parent's peak, so the address
    space's own high-water mark (``VmHWM``, reset by exec) is read where it exists."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparseprop.benchmarks.resnet_rss")
    p.add_argument("kind", choices=("sparse", "dense"))
    p.add_argument("sparsity", type=float)
    p.add_argument("batch", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("threads", type=int)
    p.add_argument("isa")
    p.add_argument("seed", type=int)
    a = p.parse_args(argv)
    print(f"{_child(a.kind, a.sparsity, a.batch, a.steps, a.threads, a.isa, a.seed):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
