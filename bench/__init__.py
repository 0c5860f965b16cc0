"""Benchmarks of the CRM backend; `python -m bench.throughput --help` (or `make bench`)."""
