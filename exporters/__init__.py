"""Exporters: where records leave the collector (``file``, ``debug``, ``kafka``, ``prometheus``, ``otlp``, ``liveview``)."""
