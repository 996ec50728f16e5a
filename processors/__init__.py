"""Processors: stages between receivers and exporters (call correlation, reports, privacy, quality)."""
