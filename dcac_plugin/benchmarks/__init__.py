"""Benchmarks behind ``dcac bench``: each returns a JSON-serialisable dict of figures."""
