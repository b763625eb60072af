"""Readers of the run state: OTLP export to a collector and a Prometheus collector for pull."""
