"""``python -m collab_core.cli``: the ``collab`` command."""

import sys

from . import main

sys.exit(main())
