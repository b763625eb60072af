"""traintel's version, in a module of its own so that every part can read it without importing
the package's ``__init__`` (the import graph stays free of cycles)."""

__version__ = "0.1.0"
