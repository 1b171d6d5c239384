"""An entry point whose object imports fine but is not a backend class."""


class NotABackend:
    """Has a name and a priority, and nothing else of a dispatch context."""

    name = "notabackend"
    priority = 1000
