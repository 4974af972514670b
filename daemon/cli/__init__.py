"""The ``medacq`` command: one module per command group; the only place that knows argparse.

Nothing imports this package (``tests/test_layering.py``); it imports the services.
"""

from medacq.daemon.cli.app import main

__all__ = ["main"]
