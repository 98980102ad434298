"""Benchmarks: commands that print a table of measured figures."""
