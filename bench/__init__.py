"""Benchmark suites (a package so that bench/conftest.py is imported as bench.conftest
and never shadows tests/conftest.py, which the tests import as ``conftest``)."""
