"""Tooling shared by the test suite (``tests/``) and the benchmark harness (``bench/``).

Not part of the installed package: both import it from the repository root, where
``python -m bench`` runs and where pytest's ``pythonpath`` setting points.
"""
