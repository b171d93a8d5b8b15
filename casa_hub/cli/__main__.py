"""``python -m casa_hub.cli``: the ``casa-hub`` command."""

import sys

from casa_hub.cli import main

sys.exit(main())
