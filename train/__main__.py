"""`python -m mde.train ...` (and `torchrun --nproc-per-node N -m mde.train ...`): the same options as `mde train`.

mde's own options (`--verbose`) may stand anywhere here: there is no `mde` before the command to give them to."""

from __future__ import annotations

import sys

from mde.cli import ROOT_OPTIONS, main


def own_options_first(args: list[str]) -> list[str]:
    """`args` as `mde` takes them: its own options (ROOT_OPTIONS) first, then `train` and the rest. A token that
    is the value of the option before it (`--out -v`: a folder named -v) stays that option's."""
    import typer

    from mde.cli import app

    train = typer.main.get_command(app).commands["train"]
    takes_value = {name for p in train.params if isinstance(p, typer.core.TyperOption) and not (p.is_flag or p.count)
                   for name in p.opts}
    own, rest = [], []
    tokens = iter(args)
    for arg in tokens:
        if arg == "--":  # what follows is train's, whatever it says
            rest += [arg, *tokens]
        elif arg in ROOT_OPTIONS:
            own.append(arg)
        else:
            rest.append(arg)
            value = next(tokens, None) if arg in takes_value else None
            if value is not None:
                rest.append(value)
    return [*own, "train", *rest]


if __name__ == "__main__":
    main(own_options_first(sys.argv[1:]))
