"""``python -m flowplug`` runs the command line."""

import sys

from flowplug.console import main

sys.exit(main())
