"""One entry for every benchmark: `python benchmarks/run.py [--quick] [--only NAME ...]`.

Each `bench_*.py` module has `run(quick) -> dict` and prints its own figures; this
runner collects them and prints every ratio measured in this one run, writing
`benchmarks/results.json` after each benchmark (`unfinished` lists those still to run: empty once all have).
Targets are checked here, not in timed tests.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path

from cli_common import Parser, can_write_in, run_main

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
    results: dict[str, dict] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                            "python": platform.python_version()}}
    for i, name in enumerate(opts.only):
        print(f"\n=== bench_{name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"bench_{name}")
        results[name] = module.run(quick=opts.quick)
        if hasattr(module, "report"):
            module.report(results[name])
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        # after each benchmark: a later one that fails or is stopped (a full run takes hours) keeps these
        results["unfinished"] = opts.only[i + 1:]
        with atomic_path(opts.out) as tmp:  # a failed write keeps the last results whole
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nresults written to {opts.out}")


if __name__ == "__main__":
    run_main(main)
