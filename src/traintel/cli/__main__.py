"""`python -m traintel.cli` (the same as the `traintel` command)."""

from . import main

main()
