"""``python -m asycamore.bench``: the benchmark's child programs (see :mod:`.programs`)."""

from .programs import main

raise SystemExit(main())
