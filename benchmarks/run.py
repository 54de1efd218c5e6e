"""One entry for every benchmark: `python benchmarks/run.py [--quick] [--only NAME ...]`.

Each `bench_*.py` module has `run(quick) -> dict` and prints its own figures; this
runner collects them and prints every ratio measured in this one run, writing
`benchmarks/results.json` after each benchmark (`unfinished` lists those still to run: empty once all have).
Each benchmark's entry says the machine it ran on and whether it was `--quick`; the entries of an earlier run
that this one does not re-measure (`--only`) are kept, and named. Targets are checked here, not in timed tests.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from cli_common import Parser, can_write_in, machine, run_main

from mde.io import atomic_path

HERE = Path(__file__).resolve().parent
BENCHES = ("synth", "train", "export", "runtime", "int8", "memory")


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    opts = parser.parse_args()
    if not opts.only:
        parser.error("--only needs at least one benchmark name")
    twice = sorted({name for name in opts.only if opts.only.count(name) > 1})
    if twice:  # the second run's figures would replace the first's
        parser.error(f"--only names {', '.join(twice)} twice; each benchmark runs once")
    if opts.out.is_dir() or not opts.out.parent.is_dir():  # found now, not after every benchmark has run
        parser.error(f"--out {opts.out}: expected a file in an existing folder")
    if not can_write_in(opts.out.parent):  # found now, not after the work
        parser.error(f"--out {opts.out}: its folder is not writable")

    sys.path.insert(0, str(HERE))
    here = machine()
    kept = earlier_results(opts.out, skip=opts.only)  # `--only runtime` after a full run: the rest stay
    if kept:
        print(f"kept from {opts.out}: " + ", ".join(
            name + "".join(f" ({note})" for note, said in (("quick", entry.get("quick")),
                                                          ("another machine", entry.get("machine") != here)) if said)
            for name, entry in kept.items()))
    results: dict[str, dict] = {**kept, "machine": here}
    for i, name in enumerate(opts.only):
        print(f"\n=== bench_{name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"bench_{name}")
        results[name] = module.run(quick=opts.quick)
        if hasattr(module, "report"):
            module.report(results[name])
        results[name].update(seconds=round(time.perf_counter() - start, 1), quick=opts.quick, machine=here)
        # after each benchmark: a later one that fails or is stopped (a full run takes hours) keeps these
        results["unfinished"] = opts.only[i + 1:]
        with atomic_path(opts.out) as tmp:  # a failed write keeps the last results whole
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nresults written to {opts.out}")


def earlier_results(path: Path, skip: list[str]) -> dict[str, dict]:
    """The benchmarks' entries of the results file at `path` but those in `skip`; {} where there is none."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    kept = {name: entry for name, entry in doc.items() if name in BENCHES and name not in skip
            and isinstance(entry, dict)}
    for entry in kept.values():  # an earlier version's entries: the file's one machine was theirs
        entry.setdefault("machine", doc.get("machine"))
    return kept


if __name__ == "__main__":
    run_main(main)
