"""The project's own tools (not shipped): importable as ``scripts.<name>`` from the tests and each other."""
