"""``python -m hfctl``: the same as the ``hfctl`` command."""

import sys

from hfctl.cli import main

sys.exit(main())
