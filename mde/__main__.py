"""`python -m mde` is the `mde` CLI."""

from mde import entry

entry()
