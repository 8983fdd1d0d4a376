"""Benchmark harness for issue 9: ``python -m bench`` (``make bench``); see docs/performance.md."""
