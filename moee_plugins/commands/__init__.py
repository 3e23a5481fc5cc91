"""Sub-commands of the ``moee`` command line (see moee_plugins/cli.py)."""
