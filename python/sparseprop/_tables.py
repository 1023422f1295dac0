"""The one text-table formatter (benchmarks, conversion reports, summaries), and the
number formats its cells use."""
from __future__ import annotations

from typing import Optional, Sequence


class Table:
    """Columns with an alignment each (``align``: one ``"l"`` or ``"r"`` per column).

    * :meth:`text`: a whole table, columns as wide as their widest cell, a rule under
      the header (and above an optional footer);
    * :meth:`header` / :meth:`row`: one line at a time at the fixed ``widths``, for
      rows printed while they are measured;
    * :meth:`markdown`: a GitHub table (left columns ``---``, right ones ``---:``;
      ``markdown_align`` when it should differ from the text's, e.g. a label column
      right-aligned in text but left-aligned on GitHub).
    """

    def __init__(self, columns: Sequence[str], align: str,
                 widths: Optional[Sequence[int]] = None,
                 markdown_align: Optional[str] = None) -> None:
        for what, value in (("align", align), ("markdown_align", markdown_align or align)):
            if len(value) != len(columns) or set(value) - {"l", "r"}:
                raise ValueError(f"{what} needs one 'l' or 'r' per column, got {value!r}")
        if widths is not None and len(widths) != len(columns):
            raise ValueError(f"widths needs one width per column, got {len(widths)}")
        self.columns, self.align = [str(c) for c in columns], align
        self.markdown_align = markdown_align or align
        self.widths = list(widths) if widths is not None else [len(c) for c in self.columns]

    def _line(self, cells: Sequence[object], widths: Sequence[int]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, self.align)).rstrip()

    def header(self) -> str:
        return self._line(self.columns, self.widths)

    def row(self, cells: Sequence[object]) -> str:
        return self._line(cells, self.widths)

    def text(self, rows: Sequence[Sequence[object]],
             footer: Optional[Sequence[object]] = None) -> str:
        lines = [list(map(str, r)) for r in rows] + ([list(map(str, footer))] if footer else [])
        widths = [max([len(c)] + [len(r[i]) for r in lines]) for i, c in enumerate(self.columns)]
        rule = "  ".join("-" * w for w in widths)
        out = [self._line(self.columns, widths), rule]
        out += [self._line(r, widths) for r in lines[:len(rows)]]
        if footer:
            out += [rule, self._line(lines[-1], widths)]
        return "\n".join(out)

    def markdown(self, rows: Sequence[Sequence[object]]) -> str:
        rule = ["---" if a == "l" else "---:" for a in self.markdown_align]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "|".join(rule) + "|"]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
        return "\n".join(lines)


def fmt_ms(v: float) -> str:
    """Milliseconds with about four significant digits."""
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def fmt_x(v: float) -> str:
    """A ratio such as a speedup."""
    return f"{v:.2f}"


def fmt_rate(v: float) -> str:
    """GFLOP/s: three significant digits up to 100, whole numbers above."""
    return "n/a" if v != v else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_pct(v: float) -> str:
    """A fraction as a percentage with one decimal; n/a for nan."""
    return "n/a" if v != v else f"{100 * v:.1f}"


def fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)
