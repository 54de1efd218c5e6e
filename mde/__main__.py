"""`python -m mde` is the `mde` CLI."""

from mde.cli import main

main()
