"""Processors: stages between receivers and exporters (``obfuscation``, ``correlation``, ``quality``, ``reports``)."""
