"""sparseprop.kernel_info() / known_isas(): the kernel registry comes from the extension,
and its block parameters are the ones the kernels use (tails at the block edges are exact)."""
from __future__ import annotations

import pytest
import torch

import sparseprop
from sparseprop import SparseLinear

from conftest import compare_with_dense

# From the ISA definitions (csrc/simd/<isa>.h): floats per register.
VECTOR_WIDTH = {"scalar": 1, "avx2": 8, "avx512": 16, "neon": 4}


def test_known_isas_is_the_dispatchers_list():
    known = sparseprop.known_isas()
    assert known[0] == "scalar" and set(known) == set(VECTOR_WIDTH)
    assert set(sparseprop.config()["compiled_isas"]) <= set(known)
    with pytest.raises(ValueError, match="expected one of auto, " + ", ".join(known)):
        sparseprop.set_isa("sse9")


def test_kernel_info_lists_every_compiled_isa():
    info = sparseprop.kernel_info()
    kernels = info["kernels"]
    assert [k["isa"] for k in kernels] == sparseprop.config()["compiled_isas"]
    assert [k["isa"] for k in kernels if k["available"]] == sparseprop.available_isas()
    for k in kernels:
        assert k["vector_width"] == VECTOR_WIDTH[k["isa"]]
        assert k["spmm_block"] >= 1 and k["sddmm_block"] >= 1
        assert k["batch_tile"] == k["vector_width"] * k["spmm_block"]
    assert sparseprop.config()["kernels"] == kernels


def test_kernel_info_follows_the_active_isa_and_threads():
    sparseprop.set_num_threads(1)
    with sparseprop.use_isa("scalar"):
        info = sparseprop.kernel_info()
        assert info["active_isa"] == "scalar" and info["num_threads"] == 1
    sparseprop.set_num_threads(None)
    assert sparseprop.kernel_info()["num_threads"] == torch.get_num_threads()


def test_show_config_prints_the_blocks(capsys):
    sparseprop.show_config()
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.strip().startswith("kernel blocks:"))
    for k in sparseprop.kernel_info()["kernels"]:
        assert f"{k['isa']} {k['vector_width']}x{k['spmm_block']}/{k['sddmm_block']}" in line


@pytest.mark.parametrize("isa", sparseprop.available_isas())
def test_batches_around_the_block_edges_match_dense(isa):
    """Forward and both gradients at batch sizes one below, at and one above each block
    of this ISA (the full blocks, the vector tail and the scalar tail all run)."""
    k = next(k for k in sparseprop.kernel_info()["kernels"] if k["isa"] == isa)
    sizes = sorted({max(1, n + d) for n in (k["vector_width"], k["batch_tile"],
                                            k["vector_width"] * k["sddmm_block"]) for d in (-1, 0, 1)})
    layer = SparseLinear(24, 10, sparsity=0.8)
    with sparseprop.use_isa(isa):
        for n in sizes:
            compare_with_dense(layer, torch.randn(n, 24, requires_grad=True), what=f"batch {n}")
