"""Benchmarks that print a table of measured figures; run as `tgloc bench ...`."""
