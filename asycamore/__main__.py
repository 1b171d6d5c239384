"""``python -m asycamore``: the same command line as the ``asycamore`` script."""

from asycamore.cli import main

raise SystemExit(main())
