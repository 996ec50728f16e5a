"""Exporters: where records leave the collector (``file``, ``debug``; Kafka, Prometheus and OTLP to come)."""
