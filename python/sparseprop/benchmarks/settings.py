"""Threads and ISA for one benchmark run, put back afterwards."""
from __future__ import annotations

import argparse
import contextlib
from typing import Optional

import torch

import sparseprop


@contextlib.contextmanager
def run_settings(parser: argparse.ArgumentParser, threads: int, isa: Optional[str]):
    """Use ``threads`` for torch and sparseprop alike and force ``isa`` (if given) inside
    the block; afterwards put the previous settings back (``main()`` may be called
    in-process: tests, notebooks). A bad ``isa`` is reported through ``parser.error``."""
    cfg = sparseprop.config()
    saved = (torch.get_num_threads(), None if cfg["threads_follow_torch"] else cfg["num_threads"],
             sparseprop.get_isa())
    try:
        torch.set_num_threads(threads)
        sparseprop.set_num_threads(threads)
        if isa:
            try:
                sparseprop.set_isa(isa)
            except (ValueError, RuntimeError) as err:
                parser.error(f"--isa {isa}: {err} (available: {', '.join(sparseprop.available_isas())})")
        yield
    finally:
        torch.set_num_threads(saved[0])
        sparseprop.set_num_threads(saved[1])
        if isa:
            best = sparseprop.available_isas()[-1]
            sparseprop.set_isa(None if saved[2] == best else saved[2])
