"""``python -m hfctl``: the same as the ``hfctl`` command."""

import sys

from hfctl.main import main

sys.exit(main())
