"""``python -m traintel``: the ``traintel`` command line, for environments whose scripts directory
is not on PATH (a job's interpreter, ``sys.executable`` in a systemd unit)."""

from traintel.cli import main

main(prog_name="traintel")
