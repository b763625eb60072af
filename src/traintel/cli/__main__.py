"""`python -m traintel.cli` (the same as the `traintel` command)."""

from traintel.cli import main

main()
