"""The ``freight`` command line (typer + rich)."""
