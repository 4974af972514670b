"""``python -m medacq.daemon.cli`` (how ``medacq up`` starts its children)."""

import sys

from medacq.daemon.cli.app import main

sys.exit(main())
