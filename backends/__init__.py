"""The built-in backends, one module per OS readiness mechanism.

They reach the factory only through the ``asycamore.backends`` entry points, exactly as a
third-party plugin does; nothing in the core imports them by name.
"""
