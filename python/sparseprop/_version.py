"""The package version (its own module so that _backend can report it without
importing the package it is part of)."""
__version__ = "0.1.0"
