"""Broken asycamore plugins: one whose module fails to import, one that is no backend."""
