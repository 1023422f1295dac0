"""What every benchmark prints first (machine, kernel path, threads, load) and the CSV
files they write."""
from __future__ import annotations

import csv
import os
import platform
from typing import List, Sequence

import torch

import sparseprop
from .._backend import cpu_model

TIMES_NOTE = "times are medians in ms; x = dense time / sparse time (>1: sparse faster)\n"


def header_lines() -> List[str]:
    cfg = sparseprop.config()
    load = load_text()
    return [
        f"CPU:        {cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()})",
        f"ISA path:   {cfg['active_isa']} (available: {', '.join(cfg['available_isas'])})",
        f"threads:    {sparseprop.get_num_threads()} sparseprop, {torch.get_num_threads()} torch",
        f"torch:      {torch.__version__}",
        f"sparseprop: {sparseprop.__version__}",
    ] + ([f"load:       {load}"] if load else [])


def load_text() -> str:
    """The load average, with a warning when other work is running ("" where unknown)."""
    try:
        one, five, _ = os.getloadavg()
    except (AttributeError, OSError):
        return ""
    text = f"{one:.2f} {five:.2f} (1 and 5 min load average before the run)"
    if one > 0.5:
        text += "  <- other work is running: timings will be noisy"
    return text


def print_header(out, markdown: bool, extra: Sequence[str] = (), table_header: str = "") -> None:
    """The header lines (+ ``extra``): a markdown list, or plain lines, the note on what
    the times and ratios are and the ``table_header`` line the plain rows follow."""
    head = header_lines() + list(extra)
    if markdown:
        print("\n".join(f"- {line}" for line in head), file=out)
        print(file=out)
    else:
        print("\n".join(head), file=out)
        print(TIMES_NOTE, file=out)
        if table_header:
            print(table_header, file=out)
    out.flush()


def write_rows_csv(path: str, rows: Sequence[dict], fallback_fields: Sequence[str]) -> None:
    """``rows`` as CSV (columns: the first row's keys, or ``fallback_fields`` if empty)."""
    names = list(rows[0].keys()) if rows else list(fallback_fields)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
