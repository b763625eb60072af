"""Side-by-side benchmarks: what observing a training loop with traintel costs, against what users
would pick instead.

    python -m benchmarks [names...] [--quick]

Each benchmark writes ``benchmarks/results/<name>.json``; ``SUMMARY.md`` next to them is rebuilt
from every result file present. See ``benchmarks/runner.py`` for the list.
"""
