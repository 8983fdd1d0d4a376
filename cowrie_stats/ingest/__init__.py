"""Ingest of Cowrie JSON logs: parse, read sources with cursors, write batches."""
