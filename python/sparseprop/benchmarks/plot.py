"""The linear table's plot: forward+backward speedup against sparsity (needs matplotlib)."""
from __future__ import annotations

from typing import Sequence


def import_matplotlib():
    """matplotlib with the file-only Agg backend, or SystemExit with what to install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib (or pip install 'sparseprop[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.ticker  # noqa: F401
    return matplotlib


def _sparsity_to_axis(s):
    import numpy as np
    return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-9, None))


def _axis_to_sparsity(a):
    import numpy as np
    return 1.0 - np.power(10.0, -np.asarray(a, dtype=float))


def write_plot(path: str, results: Sequence, title: str) -> None:
    """One line per (shape, batch) of ``results`` (:class:`~.linear.Result` rows)."""
    matplotlib = import_matplotlib()
    import matplotlib.pyplot as plt
    shapes = list(dict.fromkeys(r.shape for r in results))
    batches = list(dict.fromkeys(r.batch for r in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for si, shape in enumerate(shapes):
        for bi, batch in enumerate(batches):
            pts = sorted((r.sparsity, r.fwdbwd_x) for r in results
                         if r.shape == shape and r.batch == batch)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[si % len(colors)],
                    linestyle=styles[bi % len(styles)], marker=markers[bi % len(markers)],
                    label=f"{shape}, batch {batch}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    # Spread the high sparsities out: the axis is linear in -log10(density).
    ax.set_xscale("function", functions=(_sparsity_to_axis, _axis_to_sparsity))
    ax.set_xlabel("sparsity (log scale of density)")
    ax.set_ylabel("speedup, forward+backward (dense time / sparse time)")
    ax.set_yscale("log")
    ticker = matplotlib.ticker
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ticks = sorted({r.sparsity for r in results})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    a0, a1 = float(_sparsity_to_axis(ticks[0])), float(_sparsity_to_axis(ticks[-1]))
    pad = 0.05 * (a1 - a0) if a1 > a0 else 0.1
    ax.set_xlim(float(_axis_to_sparsity(a0 - pad)), float(_axis_to_sparsity(a1 + pad)))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
