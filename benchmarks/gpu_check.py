"""One prepared GPU check: CUDA tests, AMP training speed, PyTorch, ONNX Runtime and TensorRT latency and parity.

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--ort-path DIR] [--budget S] [--only NAME...]

Sections, in order (gpu_check_sections.py), each with a time budget (`PROFILES`; the last one selected
takes all that is left); an exception or a spent budget in one is recorded with its one-line reason and the
others still run:
  environment      GPU, driver-side versions, which of PyTorch CUDA / onnxruntime-gpu / TensorRT are here
  tests            `pytest tests -m "gpu or tensorrt"` (tests/test_cuda.py and every CUDA-only test) in a subprocess
  model            `mde data synth` images and a random-weight checkpoint (BatchNorm statistics from those images)
  training         bench_train.cuda_amp: bf16 autocast + channels_last vs FP32 images/s, resnet50 224 (goal >= 1.5x)
  torch_inference  PyTorch latency, FP32 / FP16 / BF16, batch 1 and 8, and the max |diff| to PyTorch FP32 on the CPU
  export           `mde export` FP32 + FP16 ONNX, `mde calibrate` INT8 ONNX
  onnxruntime      CUDA provider (I/O binding): providers actually used, `mde parity` of the three ONNX, latency
  tensorrt         `mde export --engine`'s build_engine from the FP16 and INT8 ONNX, `mde parity`, latency
Writes DIR/gpu_check.json, DIR/gpu_check.md and DIR/gpu_check.pytest.log (rewritten after every section,
so a crash keeps what finished). No network: random weights, synthetic data. `--device cpu` runs every
section it can on the CPU at tiny sizes (resnet18, 64 px) so the script cannot rot; CI runs it.
Exit 0 when nothing failed, 1 when a section failed or errored, 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpu_check_sections import (
    CUDA_EP,
    FILES,
    NEEDS,
    PROFILES,
    RUNNERS,
    SECTIONS,
    Check,
    Profile,
    SectionTimeout,
    Skip,
    one_line,
)

WORK_MARK = ".mde-gpu-check"  # in a --work folder this check made: its data/, model.pt and export/ may be replaced


class BadInput(Exception):
    """Bad command-line input: one line, exit 2."""


class Stopped(KeyboardInterrupt):
    """SIGTERM (what `timeout` and a machine's time limit send) taken as Ctrl-C is: the reports say which."""

    reason, exit_code = "stopped (SIGTERM)", 143


@contextlib.contextmanager
def sigterm_stops():
    """Within: SIGTERM raises `Stopped`, so a stopped check writes its reports as an interrupted one does.

    GNU `timeout` sends its signal to the process and to its group: a copy within a second is that same stop
    and is ignored (the reports are being written); one later ends the process at once, as `mde` does."""
    first: list[float] = []

    def stop(signum: int, frame: Any) -> None:
        if not first:
            first.append(time.monotonic())
            raise Stopped
        if time.monotonic() - first[0] >= 1.0:
            os._exit(Stopped.exit_code)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `SectionTimeout` in this (main) thread after `seconds` (a running C call finishes first)."""
    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"exceeded its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _requirement(ck: Check, name: str, results: dict[str, dict]) -> str | None:
    """Why `name` cannot start (what an earlier section did not make), or None."""
    needs = NEEDS.get(name, ())
    if "model" in needs and ck.checkpoint is None:
        return f"needs the model section's checkpoint ({results.get('model', {}).get('reason') or 'not made'})"
    if "export" in needs and not ck.onnx:
        return f"needs the export section's ONNX ({results.get('export', {}).get('reason') or 'none made'})"
    return None


def _status(result: dict[str, Any]) -> tuple[str, str]:
    errors = result.get("errors")
    if isinstance(errors, dict) and errors:  # {part: why}; the tests section's "errors" is pytest's count
        return "error", "; ".join(f"{k}: {v}" for k, v in errors.items())
    if result.get("failed_checks"):
        return "failed", "; ".join(result["failed_checks"])
    return "ok", ""


def run_section(ck: Check, name: str, budget: float) -> dict[str, Any]:
    """One section under its time limit; never raises (except KeyboardInterrupt). The caller empties
    `ck.partial` first (`check` does, so that a stop before this call reports nothing of the section before)."""
    started = time.perf_counter()
    try:
        with time_limit(budget):
            result = RUNNERS[name](ck, budget) if name == "tests" else RUNNERS[name](ck)
        status, reason = _status(result)
    except Skip as err:
        result, status, reason = {}, "skipped", str(err)
    except SectionTimeout as err:  # what the section measured before its time ran out stays
        result, status, reason = dict(ck.partial), "error", str(err)
    except Exception as err:  # noqa: BLE001 - fail soft: the next section still runs
        result, status, reason = dict(ck.partial), "error", one_line(err)
    return {"status": status, "reason": reason, "seconds": round(time.perf_counter() - started, 1),
            "budget_s": round(budget, 1), **result}


def summarize(ck: Check, results: dict[str, dict]) -> dict[str, Any]:
    """What was found and what actually ran on the GPU."""
    ran = {name: results.get(name, {}).get("status") not in (None, "skipped") for name in SECTIONS}
    ort_runs = results.get("onnxruntime", {}).get("runs", {})
    return {"found": ck.found,
            "ran": {"pytorch_cuda": ck.cuda and ck.found.get("pytorch_cuda", False)
                    and (ran["training"] or ran["torch_inference"]),
                    "onnxruntime_gpu": any(r["providers"][:1] == [CUDA_EP] for r in ort_runs.values()),
                    "tensorrt": bool(results.get("tensorrt", {}).get("builds"))},
            "skipped": {n: r["reason"] for n, r in results.items() if r["status"] == "skipped"},
            "problems": {n: f"{r['status']}: {r['reason']}" for n, r in results.items()
                         if r["status"] in ("error", "failed")}}


def write_reports(ck: Check, report: dict[str, Any]) -> None:
    from gpu_check_report import render

    from mde.io import write_bytes_atomic

    write_bytes_atomic(ck.out / FILES["json"], (json.dumps(report, indent=2, default=str) + "\n").encode())
    write_bytes_atomic(ck.out / FILES["markdown"], render(report).encode())


def section_budget(profile: Profile, name: str, selected: set[str], total_s: float, remaining: float) -> float:
    """`name`'s seconds: its own budget (scaled up with a --budget above the default), or, for the last selected
    section, all that is left: TensorRT's cold builds come last and take what the others did not spend (the
    builder holds no GIL, so a section stopped by its alarm loses the engine it had just built)."""
    if name == [n for n in SECTIONS if n in selected][-1]:
        return remaining
    scale = max(total_s / profile.total_s, 1.0)  # --budget above the default gives every section more
    return min(profile.budgets[name] * scale, remaining)


def check(ck: Check, selected: set[str], total_s: float, argv: list[str]) -> int:
    """Run the selected sections, rewriting the reports after each; return the exit code."""
    deadline = time.monotonic() + total_s
    results: dict[str, dict] = {}
    report: dict[str, Any] = {"tool": "benchmarks/gpu_check.py", "command": " ".join(["gpu_check.py", *argv]),
                              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "device": ck.device, "profile": asdict(ck.profile), "budget_s": total_s,
                              "files": FILES, "sections": results}
    started = section_started = time.perf_counter()
    name = SECTIONS[0]
    try:
        for name in SECTIONS:
            remaining = deadline - time.monotonic()
            why = ("not selected (--only)" if name not in selected else _requirement(ck, name, results)
                   or ("the total time budget is spent" if remaining < 5 else None))
            if why:
                results[name] = {"status": "skipped", "reason": why, "seconds": 0.0}
            else:
                section_started, ck.partial = time.perf_counter(), {}
                results[name] = run_section(ck, name, section_budget(ck.profile, name, selected, total_s, remaining))
            r = results[name]
            print(f"gpu_check: {name:16s} {r['status']:8s} {r['seconds']:6.1f} s  {r['reason']}", flush=True)
            report.update(summarize(ck, results), total_s=round(time.perf_counter() - started, 1))
            write_reports(ck, report)
        report["exit_code"] = 1 if report["problems"] else 0
        write_reports(ck, report)  # inside: a stop while the final reports are written is recorded too
    except KeyboardInterrupt as err:  # the reports say so: a reader of `problems` would see a clean run
        if name not in results:  # stopped in the section; else between sections, writing the reports
            how = err.reason if isinstance(err, Stopped) else "interrupted (Ctrl-C)"
            results[name] = {"status": "error", "reason": how, **ck.partial,
                             "seconds": round(time.perf_counter() - section_started, 1)}
        for later in SECTIONS[SECTIONS.index(name) + 1:]:
            results[later] = {"status": "skipped", "reason": "not run: the check was interrupted", "seconds": 0.0}
        report.update(summarize(ck, results), total_s=round(time.perf_counter() - started, 1),
                      exit_code=err.exit_code if isinstance(err, Stopped) else 130)
        write_reports(ck, report)
        raise
    found = ", ".join(f"{k} {'found' if v else 'not found'}" for k, v in report["found"].items())
    ran = ", ".join(f"{k} {'ran' if v else 'did not run'}" for k, v in report["ran"].items())
    print(f"gpu_check: {found}; {ran}")
    for name, reason in report["skipped"].items():
        print(f"gpu_check: skipped {name}: {reason}")
    written = [str(ck.out / f) for f in FILES.values() if (ck.out / f).is_file()]
    print(f"gpu_check: {report['total_s']:.0f} s; wrote {', '.join(written)}")
    return report["exit_code"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        raise BadInput(message)


def _folder(path: Path, what: str) -> Path:
    """Create `path` (checked first with `_not_a_file`); one-line `BadInput` when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"{path}: cannot create {what} ({err.strerror or err})") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"{path}: {what} is not writable")
    return path.resolve()


def _path(text: str) -> Path:
    """A path option's value: an empty one (`--out "$OUT"` with OUT unset) is refused, not read as "."."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name a folder")
    return Path(text)


def _work_folder(path: Path) -> Path:
    """`--work`, made and marked as this check's, so a later check may reuse it."""
    folder = _folder(path, "--work folder")
    (folder / WORK_MARK).touch()
    return folder


def _not_a_file(path: Path | None, what: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise BadInput(f"{path}: {what} exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=_path, required=True, help="folder for the reports (at most 3 files)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the check; cpu: a dry run at tiny sizes (default cuda)")
    parser.add_argument("--ort-path", type=_path, default=None, metavar="DIR",
                        help="a `pip install --target` folder holding onnxruntime-gpu, put first on sys.path")
    parser.add_argument("--budget", type=float, default=None,
                        help="total seconds (default: 450 with cuda, 600 with cpu); above the default, every "
                        "section's own budget grows in proportion")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None, metavar="SECTION",
                        help=f"run only these sections (and what they need): {', '.join(SECTIONS)}")
    parser.add_argument("--work", type=_path, default=None,
                        help="keep data, checkpoint, ONNX and engines here: a new or empty folder, or one an "
                        "earlier check kept (default: a temporary folder)")
    parser.add_argument("--check-options", action="store_true",
                        help="check the options, write nothing and exit (gpu_check_offline.sh does, before it "
                        "installs anything)")
    try:
        args = parser.parse_args(argv)
        if args.budget is not None and not 30 <= args.budget <= 24 * 3600:  # NaN and inf fail too
            raise BadInput(f"--budget must be 30 s to 24 h (a section needs a few seconds to start), "
                           f"got {args.budget:g}")
        if args.ort_path is not None:
            if not args.ort_path.is_dir():
                raise BadInput(f"{args.ort_path}: --ort-path "
                               f"{'is not a folder' if args.ort_path.exists() else 'folder not found'}")
            if not (args.ort_path / "onnxruntime" / "__init__.py").is_file():
                raise BadInput(f"{args.ort_path}: no onnxruntime package in this folder "
                               "(wheel_parts.py join DIR --install THIS_FOLDER puts it there)")
        _not_a_file(args.out, "--out folder")
        _not_a_file(args.work, "--work folder")
        if args.work is not None and args.work.is_dir() and not (args.work / WORK_MARK).is_file():
            try:  # it writes data/, model.pt, export/ there, replacing theirs
                taken = any(args.work.iterdir())
            except OSError as err:
                raise BadInput(f"{args.work}: cannot read the --work folder ({err.strerror or err})") from None
            if taken:
                raise BadInput(f"{args.work}: --work folder holds files of its own; give a new or empty folder, "
                               f"or one an earlier check kept (it holds a {WORK_MARK} file)")
        for name in FILES.values():  # before any folder is made
            report = args.out / name
            if report.exists() and not report.is_symlink() and not report.is_file():
                raise BadInput(f"{report}: a report is written here, and this is no file (a folder?)")
        if args.check_options:
            return 0
        if args.ort_path is not None:
            sys.path.insert(0, str(args.ort_path.resolve()))  # before anything imports onnxruntime
            try:
                import onnxruntime  # noqa: F401 - the folder the user named must hold one that works
            except Exception as err:  # noqa: BLE001 - whatever its __init__ raises
                raise BadInput(f"{args.ort_path}: its onnxruntime does not import ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if importlib.util.find_spec("mde") is None:
            raise BadInput("mde is not installed in this Python: pip install --no-deps --no-build-isolation -e .")
        work_ctx = (contextlib.nullcontext(str(_work_folder(args.work))) if args.work
                    else tempfile.TemporaryDirectory(prefix="mde-gpu-check-"))
        out = _folder(args.out, "--out folder")  # after --work: a bad --work leaves no empty --out behind
    except BadInput as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    profile = PROFILES[args.device]
    selected = set(args.only or SECTIONS) | {"environment"}
    for name in list(selected):
        selected |= set(NEEDS.get(name, ()))
    for name in FILES.values():  # an earlier check's reports: this one's replace them, or are not there at all
        (out / name).unlink(missing_ok=True)
    from mde.errors import MdeError  # mde is there: checked above

    with work_ctx as work:
        ck = Check(args.device, profile, out, Path(work), args.ort_path and args.ort_path.resolve())
        try:
            with sigterm_stops():
                return check(ck, selected, args.budget or profile.total_s, argv)
        except MdeError as err:  # a report that cannot be written (a full disk): exit 1 would say a section failed
            print(f"gpu_check: error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            how = "stopped by SIGTERM" if isinstance(err, Stopped) else "interrupted"
            print(f"gpu_check: {how}; the reports hold the sections that finished", file=sys.stderr)
            return err.exit_code if isinstance(err, Stopped) else 130


if __name__ == "__main__":
    sys.exit(main())
