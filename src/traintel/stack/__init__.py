"""The observability stack's programs without Docker: build them (``install``), run them on
one host with the repo's own configs (``native``). ``components`` is the table of versions."""
