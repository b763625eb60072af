"""The core every layer stands on: environment variables, validation, redaction, the metric catalog, the hot-path state and error classification. Internal: not public API."""
