"""``python -m hyperrl.adapt``: see :func:`hyperrl.adapt.cli.main`."""

import sys

from hyperrl.adapt.cli import main
from hyperrl.cli import main_guard

if __name__ == "__main__":
    sys.exit(main_guard(main)())
