"""Benchmarks side by side: `python -m bench [--short] [--scenario NAME ...]` (see docs/BENCHMARKS.md).

Every comparison runs in the same invocation, on the same machine and PostgreSQL, and is reported as a
ratio; absolute times are context only.
"""
