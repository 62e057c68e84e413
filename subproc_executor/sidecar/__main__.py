"""``python -m subproc_executor.sidecar``: see ``main``."""

import sys

from .main import main

sys.exit(main())
