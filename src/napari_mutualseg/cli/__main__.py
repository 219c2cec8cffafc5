"""``python -m napari_mutualseg.cli``: the ``napari-mutualseg`` command."""

import sys

from . import main

sys.exit(main())
