"""Property test for SparseConv2d: hypothesis draws the whole nn.Conv2d option space,
the kernel path and the data layout; the masked dense twin is the oracle (outputs,
input gradient, values gradient, bias gradient; see test_conv.compare_conv)."""
from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseprop
from sparseprop import SparseConv2d
from sparseprop import conv as conv_module

from test_conv import compare_conv, dense_oracle_single_threaded  # noqa: F401 (autouse fixture)

ISAS = sparseprop.available_isas()


@st.composite
def conv_configs(draw):
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if stride == (1, 1) and draw(st.booleans()):
        padding = draw(st.sampled_from(["same", "valid"]))
        pads = (0, 0) if padding == "valid" else tuple(d * (k - 1) for d, k in zip(dilation, kernel))
    else:
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        pads = tuple(2 * p for p in padding)
    # The smallest input each dimension needs for at least one output pixel.
    sizes = [max(1, d * (k - 1) + 1 - p) for d, k, p in zip(dilation, kernel, pads)]
    size = (draw(st.integers(sizes[0], sizes[0] + 8)), draw(st.integers(sizes[1], sizes[1] + 8)))
    groups = draw(st.sampled_from([1, 2, "depthwise"]))
    per_group_in, per_group_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if groups == "depthwise":
        in_channels = draw(st.integers(1, 6))
        groups, out_channels = in_channels, in_channels * per_group_out
    else:
        in_channels, out_channels = groups * per_group_in, groups * per_group_out
    return dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel,
                stride=stride, padding=padding, dilation=dilation, groups=groups,
                bias=draw(st.booleans())), size


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config=conv_configs(), batch=st.integers(1, 9), sparsity=st.floats(0.0, 1.0),
       isa_name=st.sampled_from(ISAS), layout=st.sampled_from(["auto", "batch", "width"]),
       seed=st.integers(0, 2**31 - 1))
def test_property_matches_dense(config, batch, sparsity, isa_name, layout, seed):
    kwargs, (h, w) = config
    g = torch.Generator().manual_seed(seed)
    m = SparseConv2d(**kwargs, sparsity=sparsity, generator=g)
    x = torch.randn(batch, kwargs["in_channels"], h, w, generator=g, requires_grad=True)
    previous = conv_module.set_layout(layout)
    try:
        with sparseprop.use_isa(isa_name):
            compare_conv(m, x, what=f"[{isa_name}, {layout}] {kwargs} {(batch, h, w)}")
    finally:
        conv_module.set_layout(previous)
