"""`python -m mde.train ...` (and `torchrun --nproc-per-node N -m mde.train ...`): the same options as `mde train`.

mde's own options (`--verbose`) may stand anywhere here: there is no `mde` before the command to give them to."""

from __future__ import annotations

import sys

from mde.cli import ROOT_OPTIONS, main

if __name__ == "__main__":
    args = sys.argv[1:]
    own = [arg for arg in args if arg in ROOT_OPTIONS]
    main([*own, "train", *(arg for arg in args if arg not in ROOT_OPTIONS)])
