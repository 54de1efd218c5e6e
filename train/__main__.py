"""`python -m mde.train ...` (and `torchrun --nproc-per-node N -m mde.train ...`): the same options as `mde train`."""

from __future__ import annotations

import sys

from mde.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
