"""Entry point of benchmark child processes (see ``harness.in_child``):

    python -m benchmarks.child module:function '{"keyword": "arguments"}'

Calls the function and prints what it returned as the last line of stdout, in JSON.
"""

import importlib
import json
import sys

module, _, function = sys.argv[1].partition(":")
result = getattr(importlib.import_module(module), function)(**json.loads(sys.argv[2]))
sys.stdout.write(json.dumps(result) + "\n")
sys.stdout.flush()
