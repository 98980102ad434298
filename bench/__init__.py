"""Benchmarks that print a table of measured figures; run as `tgloc bench ...`."""

# Importing `core` first caps the numeric libraries' vector code before numpy and torch
# load, so a benchmark runs the same code paths as `tgloc` itself.
import core  # noqa: F401
