"""benchmarks/gpu_check.py: the --device cpu dry run end to end, fail-soft sections and budgets, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
SECTIONS = ["environment", "tests", "model", "training", "torch_inference", "export", "onnxruntime", "tensorrt"]


def run(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=ROOT)


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check
    import gpu_check_sections

    return gpu_check, gpu_check_sections


@pytest.mark.slow
def test_cpu_dry_run_writes_both_reports_with_every_section(tmp_path):
    out = tmp_path / "out"
    started = time.perf_counter()
    proc = run("--out", out, "--device", "cpu")
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert {"gpu_check.json", "gpu_check.md"} <= set(files) and len(files) <= 8, files

    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == SECTIONS
    status = {name: r["status"] for name, r in sections.items()}
    assert status == {"environment": "ok", "tests": "ok", "model": "ok", "training": "skipped",
                      "torch_inference": "ok", "export": "ok", "onnxruntime": "ok", "tensorrt": "skipped"}, sections
    assert report["exit_code"] == 0 and report["device"] == "cpu" and not report["problems"]
    assert set(report["found"]) == set(report["ran"]) == {"pytorch_cuda", "onnxruntime_gpu", "tensorrt"}
    assert report["ran"] == {"pytorch_cuda": False, "onnxruntime_gpu": False, "tensorrt": False}
    assert report["total_s"] <= report["budget_s"] and report["total_s"] <= seconds

    # the GPU-only parts say why they did not run
    assert "--device cpu" in sections["training"]["reason"]
    assert "TensorRT is not installed" in sections["tensorrt"]["reason"] or "--device cpu" in sections["tensorrt"]["reason"]
    assert set(sections["torch_inference"]["not_run"]) == {"fp16", "bf16"}
    assert "CUDAExecutionProvider" in sections["onnxruntime"]["not_run"]
    assert report["skipped"] == {"training": sections["training"]["reason"], "tensorrt": sections["tensorrt"]["reason"]}

    # tests: the CUDA-only selection ran in a subprocess; without a GPU every one skips, with its reason
    tests = sections["tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["skipped"] >= 2
    assert any("test_cuda" in t["test"] and t["outcome"] == "skipped" and t["message"] for t in tests["not_passed"])
    assert (out / "gpu_check.pytest.log").read_text().startswith(sys.executable)

    # figures with their units
    lat = sections["torch_inference"]["latency"]
    assert {(r["precision"], r["batch"]) for r in lat} == {("fp32", 1), ("fp32", 8)}
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 and r["max_abs_diff_vs_cpu_fp32_m"] < 1e-3 for r in lat)
    assert [a["precision"] for a in sections["export"]["artifacts"]] == ["fp32", "fp16", "int8"]
    assert all(a["size_mib"] > 0 for a in sections["export"]["artifacts"])
    ort = sections["onnxruntime"]
    assert [r["precision"] for r in ort["parity"]] == ["fp32", "fp16", "int8"]
    assert all(r["passed"] and r["images"] == 4 for r in ort["parity"]), ort["parity"]
    assert all(run["providers"][0] == "CPUExecutionProvider" for run in ort["runs"].values())
    assert {(r["precision"], r["call"], r["batch"]) for r in ort["latency"]} >= {("int8", "infer", 8),
                                                                                  ("fp32", "predict 480x640", 1)}

    md = (out / "gpu_check.md").read_text()
    for heading in ("# mde GPU check", "## Found and ran", "## Sections", "## tests", "## torch_inference",
                    "## export", "## onnxruntime"):
        assert f"\n{heading}\n" in f"\n{md}", heading
    for unit in ("median (ms)", "images/s", "size (MiB)", "RMSE (m)", "time (s)"):
        assert unit in md, unit
    assert sections["training"]["reason"] in md and sections["tensorrt"]["reason"] in md
    assert "skipped training: --device cpu" in proc.stdout and "skipped tensorrt:" in proc.stdout


def _fakes(gs, calls: list[str]) -> dict:
    def environment(ck):
        calls.append("environment")
        ck.found = {"pytorch_cuda": False, "onnxruntime_gpu": False, "tensorrt": False}
        return {"versions": {"python": "3"}, "found": ck.found}

    def tests(ck, budget):
        calls.append("tests")
        return {"selection": "x", "exit_code": 1, "passed": 1, "failed": 1, "errors": 1, "skipped": 0,
                "not_passed": [{"test": "t::a", "outcome": "failed", "message": "boom"}], "log": "l",
                "failed_checks": ["1 failed"]}  # pytest's error count: read as a {part: why}, it lost the counts

    def model(ck):
        calls.append("model")
        raise RuntimeError("cannot build the model\nsecond line")

    def training(ck):
        calls.append("training")
        ck.partial["fp32_images_per_s"] = 123.0  # measured before the budget ran out: kept
        time.sleep(30)

    def tensorrt(ck):
        calls.append("tensorrt")
        raise gs.Skip("TensorRT is not installed (fake)")

    def never(ck):  # needs the model's checkpoint: must not be called
        calls.append("never")
        return {}

    return {"environment": environment, "tests": tests, "model": model, "training": training,
            "torch_inference": never, "export": never, "onnxruntime": never, "tensorrt": tensorrt}


def test_sections_fail_soft_within_their_budgets(gpu_check, monkeypatch, tmp_path, capsys):
    gc, gs = gpu_check
    calls: list[str] = []
    for name, fake in _fakes(gs, calls).items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    profile = gs.PROFILES["cpu"]
    monkeypatch.setitem(gs.PROFILES, "cpu", replace(profile, budgets={**profile.budgets, "training": 1}))
    started = time.perf_counter()
    code = gc.main(["--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1 and time.perf_counter() - started < 10
    assert calls == ["environment", "tests", "model", "training"]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    s = report["sections"]
    assert s["model"]["status"] == "error" and s["model"]["reason"] == "RuntimeError: cannot build the model"
    assert s["training"]["status"] == "error" and "exceeded its 1 s budget" in s["training"]["reason"]
    assert s["training"]["fp32_images_per_s"] == 123.0 and s["training"]["seconds"] < 5
    assert s["tests"]["status"] == "failed" and s["tests"]["reason"] == "1 failed"
    assert (s["tests"]["passed"], s["tests"]["errors"]) == (1, 1)
    for name in ("torch_inference", "export", "onnxruntime", "tensorrt"):
        assert s[name]["status"] == "skipped" and "needs the model section" in s[name]["reason"], s[name]
    assert set(report["problems"]) == {"tests", "model", "training"} and report["exit_code"] == 1
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "exceeded its 1 s budget" in md and "| t::a | failed | boom |" in md
    out = capsys.readouterr().out
    assert "skipped export: needs the model section's checkpoint (RuntimeError: cannot build the model)" in out


def test_the_tests_section_collects_exactly_the_files_of_the_cuda_tests(gpu_check):
    """Only the files that hold `gpu` or `tensorrt` tests are collected (an error in any other module stopped pytest
    before the CUDA tests ran): the same files as pytest's own selection."""
    _, gs = gpu_check
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", gs.TEST_SELECTION, "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    selected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert selected and selected == {str(path) for path in gs.marked_test_files()}, proc.stdout[-2000:]


def test_only_runs_the_sections_it_needs(gpu_check, monkeypatch, tmp_path, capsys):
    gc, gs = gpu_check
    calls: list[str] = []
    fakes = _fakes(gs, calls)

    def model(ck):
        calls.append("model")
        ck.checkpoint = tmp_path / "model.pt"
        return {}

    def export(ck):
        calls.append("export")
        ck.onnx["fp32"] = tmp_path / "model.onnx"
        return {}

    def onnxruntime(ck):
        calls.append("onnxruntime")
        return {"runs": {}}

    fakes.update(model=model, export=export, onnxruntime=onnxruntime)
    for name, fake in fakes.items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    assert gc.main(["--out", str(tmp_path / "out"), "--device", "cpu", "--only", "onnxruntime", "tensorrt"]) == 0
    assert calls == ["environment", "model", "export", "onnxruntime", "tensorrt"]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["sections"]["tests"]["reason"] == "not selected (--only)"
    assert report["sections"]["tensorrt"] == {"status": "skipped", "reason": "TensorRT is not installed (fake)",
                                              "seconds": 0.0, "budget_s": report["sections"]["tensorrt"]["budget_s"]}
    assert report["skipped"]["tensorrt"] == "TensorRT is not installed (fake)" and report["exit_code"] == 0
    # each section has its own budget but the last, which takes what is left: TensorRT's cold builds
    assert report["sections"]["onnxruntime"]["budget_s"] == gs.PROFILES["cpu"].budgets["onnxruntime"]
    assert report["sections"]["tensorrt"]["budget_s"] > gs.PROFILES["cpu"].total_s - 30
    assert "skipped tensorrt: TensorRT is not installed (fake)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_check.json", "gpu_check.md"]


@pytest.mark.parametrize("args, needle", [
    (["--out", "{tmp}/file.txt"], "file.txt: --out folder exists and is not a folder"),
    (["--out", "{tmp}/o", "--ort-path", "{tmp}/nowhere"], "nowhere: --ort-path folder not found"),
    (["--out", "{tmp}/o", "--ort-path", "{tmp}/empty"], "empty: no onnxruntime package in this folder"),
    (["--out", "{tmp}/o", "--budget", "0"], "--budget must be 30 s to 24 h"),
    (["--out", "{tmp}/o", "--budget", "inf"], "--budget must be 30 s to 24 h"),
    (["--out", "{tmp}/o", "--only", "bogus"], "invalid choice: 'bogus'"),
    (["--out", "{tmp}/o", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["--out", "{tmp}/o", "--work", "{tmp}/file.txt"], "--work folder exists and is not a folder"),
    # `--out "$OUT"` with OUT unset wrote the reports into the current folder
    (["--out", ""], "argument --out: an empty path; name a folder"),
    (["--out", "{tmp}/o", "--ort-path", "{tmp}/file.txt"], "file.txt: --ort-path is not a folder"),
    (["--out", "{tmp}/o", "--ort-path", "{tmp}/ortbad"], "ortbad: its onnxruntime does not import (RuntimeError: boom)"),
    # the check writes data/, model.pt and export/ into --work: a user's folder lost its files
    (["--out", "{tmp}/o", "--work", "{tmp}/mine"], "mine: --work folder holds files of its own"),
    ([], "the following arguments are required: --out"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "ortbad" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "ortbad" / "onnxruntime" / "__init__.py").write_text("raise RuntimeError('boom')")
    (tmp_path / "mine" / "data").mkdir(parents=True)
    (tmp_path / "mine" / "data" / "notes.txt").write_text("mine")
    proc = run(*(a.format(tmp=tmp_path) for a in args), timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("gpu_check: error: "), proc.stderr
    assert not (tmp_path / "o").exists()


def test_markdown_renders_the_gpu_only_sections(gpu_check):
    """The renderers of sections the dry run skips (training, TensorRT), fed a report of the JSON's shape (made-up numbers)."""
    import gpu_check_report

    training = {"status": "ok", "reason": "", "seconds": 9.0, "budget_s": 45, "device": "GPU-X", "backbone": "resnet50",
                "batch": 64, "size": 224, "amp_dtype": "torch.bfloat16", "fp32_images_per_s": 100.0,
                "amp_channels_last_images_per_s": 160.0, "speedup": 1.6, "goal_speedup": 1.5, "goal_met": True,
                "fp32_note": "FP32 convolutions may use TF32 (cudnn.allow_tf32=True)"}
    trt = {"status": "failed", "reason": "parity FAIL: model.int8.engine", "seconds": 50.0, "budget_s": 60,
           "tensorrt": "11.4", "gpu": "GPU-X", "compute_capability": "9.0",
           "builds": [{"precision": "fp16", "source": "model.fp16.onnx", "build_s": 20.0, "engine_mib": 50.0}],
           "parity": [{"artifact": "model.fp16.engine", "precision": "fp16", "backend": "tensorrt", "images": 16,
                       "rmse": 3.0, "ssim": 0.5, "d_rmse": 1e-4, "d_ssim": 1e-5, "max_abs_diff": 0.01,
                       "p99_over_range": 1e-4, "passed": True, "failed": []}],
           "latency": [{"precision": "fp16", "call": "infer", "batch": 8, "median_ms": 2.0, "p90_ms": 2.5,
                        "images_per_s": 4000.0}], "errors": {}}
    report = {"command": "gpu_check.py --out x", "started": "now", "device": "cuda", "budget_s": 450, "total_s": 60,
              "exit_code": 1, "found": {"pytorch_cuda": True, "onnxruntime_gpu": False, "tensorrt": True},
              "ran": {"pytorch_cuda": True, "onnxruntime_gpu": False, "tensorrt": True},
              "sections": {"environment": {"status": "ok", "reason": "", "versions": {"gpu": "GPU-X"}},
                           "training": training, "tensorrt": trt}}
    md = gpu_check_report.render(report)
    assert "GPU: GPU-X" in md and "| TensorRT | yes | yes |" in md and "partial result" not in md
    assert "Speed-up: **1.6x** (goal >= 1.5x: met)" in md and "| torch.bfloat16 autocast + channels_last | 160 |" in md
    assert "| fp16 | model.fp16.onnx | 20 | 50 |" in md and "| model.fp16.engine | fp16 | tensorrt | 16 |" in md
    assert "| fp16 | infer | 8 | 2 | 2.5 | 4000 |" in md


OFFLINE = BENCH / "gpu_check_offline.sh"


def _offline(tmp_path: Path, *args: str, wheels: bool, ort: bool, stale_site: bool = False, foreign: bool = False,
             **env_changes: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run gpu_check_offline.sh with PYTHON a stand-in that logs each call (argv and PYTHONPATH) and hands
    `--check-options` to the real Python; `ort`: an onnxruntime wheel among the carried ones; `stale_site`: an
    onnxruntime an earlier run left in MDE_SITE."""
    log, fake = tmp_path / "calls.log", tmp_path / "python"
    fake.write_text(f'#!/bin/bash\necho "PWD=$PWD PYTHONPATH=$PYTHONPATH $*" >> {log}\n'
                    f'if [[ " $* " == *" --check-options "* ]]; then exec {sys.executable} "$@"; fi\n'
                    # pip refuses a wheel for another Python; FAIL_EDITABLE: mde's own install fails
                    'if [[ " $* " == *"-cp39-"* ]]; then exit 1; fi\n'
                    'if [[ -n $FAIL_EDITABLE && " $* " == *" -e "* ]]; then exit 1; fi\n')
    fake.chmod(0o755)
    wheel_dir, site = tmp_path / "wheels", tmp_path / "site"
    wheel_dir.mkdir()
    if wheels:
        (wheel_dir / "onnxconverter_common-1.16.0-py2.py3-none-any.whl").write_bytes(b"")
    if ort:
        (wheel_dir / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    if foreign:
        (wheel_dir / "rich-14.0.0-cp39-cp39-linux_x86_64.whl").write_bytes(b"")
    if stale_site:
        (site / "onnxruntime").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "MDE_SITE": str(site), "MDE_WHEELS": str(wheel_dir),
           **env_changes}
    proc = subprocess.run(["bash", str(OFFLINE), *args], capture_output=True, text=True, env=env, check=False,
                          cwd=tmp_path, timeout=60)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_offline_wrapper_installs_carried_wheels_first_then_mde_then_runs_the_check(tmp_path):
    proc, calls = _offline(tmp_path, "OUTDIR", "--budget", "300", wheels=True, ort=True)
    assert proc.returncode == 0, proc.stderr
    site = tmp_path / "site"
    assert len(calls) == 5, calls
    assert calls.pop(0).endswith("gpu_check.py --out OUTDIR --budget 300 --check-options")  # before installing
    for call, wheel in zip(calls, ("onnxconverter_common", "onnxruntime_gpu")):  # one pip call each
        assert "-m pip install" in call and f"--target {site}" in call and call.count(".whl") == 1 and wheel in call
    assert "--no-index" in calls[2] and calls[2].endswith(f"-e {ROOT}")  # mde itself, offline, from the checkout
    assert calls[3].startswith(f"PWD={tmp_path} PYTHONPATH={site} {ROOT}/benchmarks/gpu_check.py --out OUTDIR "
                               f"--ort-path {site}")  # from the caller's folder: a relative OUT stays there
    assert calls[3].endswith("--budget 300")


def test_offline_wrapper_goes_on_past_a_wheel_or_an_install_that_fails(tmp_path):
    """One wheel for another Python, then mde's own install failing (an old setuptools without wheel): each is
    said and the check still runs, mde from the checkout on PYTHONPATH. Either used to end the run with no report."""
    proc, calls = _offline(tmp_path, "OUTDIR", wheels=True, ort=False, foreign=True, FAIL_EDITABLE="1")
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check_offline: rich-14.0.0-cp39-cp39-linux_x86_64.whl: not installed (above); going on without it" \
        in proc.stderr
    assert f"gpu_check_offline: mde not installed (above); running it from {ROOT} on PYTHONPATH" in proc.stderr
    site = tmp_path / "site"
    assert calls[-1].startswith(f"PWD={tmp_path} PYTHONPATH={ROOT}:{site} {ROOT}/benchmarks/gpu_check.py --out OUTDIR")


def test_offline_wrapper_without_wheels_says_so_and_still_runs(tmp_path):
    proc, calls = _offline(tmp_path, "OUTDIR", wheels=False, ort=False)
    assert proc.returncode == 0, proc.stderr
    assert "no wheels in" in proc.stderr and "onnxconverter-common" in proc.stderr
    assert len(calls) == 3 and "--ort-path" not in calls[2] and "benchmarks/gpu_check.py --out OUTDIR" in calls[2]
    assert calls[2].startswith(f"PWD={tmp_path} ")


def test_offline_wrapper_passes_no_ort_path_for_an_onnxruntime_an_earlier_run_left(tmp_path):
    proc, calls = _offline(tmp_path, "OUTDIR", wheels=True, ort=False, stale_site=True)
    assert proc.returncode == 0 and len(calls) == 4 and "--ort-path" not in calls[3], calls


@pytest.mark.parametrize("env, says", [
    ({"MDE_WHEELS": "/nonexistent/wheels"}, "MDE_WHEELS /nonexistent/wheels: folder not found"),
    ({"PYTHON": "/nonexistent/python3"},
     "/nonexistent/python3: no such Python (set PYTHON to the one that holds CUDA PyTorch)"),
])
def test_offline_wrapper_refuses_a_named_folder_or_python_that_is_not_there(tmp_path, env, says):
    proc, calls = _offline(tmp_path, "OUTDIR", wheels=True, ort=False, **env)
    assert proc.returncode == 2 and proc.stderr.strip() == f"gpu_check_offline: {says}" and not calls, proc.stderr


@pytest.mark.parametrize("args, says", [
    (("--budget", "5"), "--budget must be 30 s to 24 h"),
    (("--only", "trainning"), "argument --only: invalid choice: 'trainning'"),
    (("--work", "WORK"), "WORK: --work folder holds files of its own"),
])
def test_offline_wrapper_checks_the_checks_options_before_installing_anything(tmp_path, args, says):
    (tmp_path / "WORK").mkdir()
    (tmp_path / "WORK" / "notes.txt").write_text("mine")
    proc, calls = _offline(tmp_path, "OUTDIR", *args, wheels=True, ort=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert len(calls) == 1 and calls[0].endswith("--check-options"), calls  # no pip, no check
    assert not (tmp_path / "OUTDIR").exists() and not (tmp_path / "site").exists()


@pytest.mark.parametrize("args", [(), ("--device", "cpu"), ("",)])
def test_offline_wrapper_without_an_out_folder_is_one_usage_line(tmp_path, args):
    proc, calls = _offline(tmp_path, *args, wheels=True, ort=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "usage" in proc.stderr and not calls


def test_a_folder_at_a_report_name_is_refused_before_any_folder_is_made(tmp_path):
    (tmp_path / "out" / "gpu_check.md").mkdir(parents=True)
    proc = run("--out", tmp_path / "out", "--work", tmp_path / "work", "--device", "cpu", "--only", "environment",
               timeout=120)
    assert proc.returncode == 2 and "gpu_check.md: a report is written here" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "work").exists()


def test_ctrl_c_is_written_in_the_reports(gpu_check, monkeypatch, tmp_path):
    """An interrupted check left `problems: {}` and no exit code: a reader saw a clean, unfinished run."""
    gc, gs = gpu_check
    calls: list[str] = []
    fakes = _fakes(gs, calls)

    def model(ck):
        ck.partial["synth_images"] = 48  # what the section had done by then: kept, as on a timeout
        raise KeyboardInterrupt

    fakes["model"] = model
    for name, fake in fakes.items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    with pytest.raises(KeyboardInterrupt):
        gc.check(gs.Check("cpu", gs.PROFILES["cpu"], tmp_path, tmp_path, None), set(gs.SECTIONS), 600, [])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["exit_code"] == 130 and report["problems"]["model"] == "error: interrupted (Ctrl-C)"
    assert report["sections"]["export"]["reason"] == "not run: the check was interrupted"
    assert report["sections"]["model"]["synth_images"] == 48
    assert "exit code 130" in (tmp_path / "gpu_check.md").read_text()


def test_sigterm_is_written_in_the_reports_and_exits_143(gpu_check, monkeypatch, tmp_path, capsys):
    """A machine's time limit or `timeout` sends SIGTERM: it left no report of the section it stopped."""
    gc, gs = gpu_check
    fakes = _fakes(gs, [])

    def model(ck):
        ck.partial["synth_images"] = 48
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the section")

    fakes["model"] = model
    for name, fake in fakes.items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    before = signal.getsignal(signal.SIGTERM)
    assert gc.main(["--out", str(tmp_path / "out"), "--device", "cpu", "--only", "model"]) == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the check's handler is gone again
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["exit_code"] == 143 and report["problems"]["model"] == "error: stopped (SIGTERM)"
    assert report["sections"]["model"]["synth_images"] == 48
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_a_stop_while_the_final_reports_are_written_is_recorded(gpu_check, monkeypatch, tmp_path):
    """The last write (the one with the exit code) was outside the stop handling: a stop there left the
    previous report, with no exit code."""
    gc, gs = gpu_check
    for name, fake in _fakes(gs, []).items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    write = gc.write_reports

    def stopped_at_the_final_write(ck, report):
        if "exit_code" in report and not report.get("stopped_once"):
            report["stopped_once"] = True
            raise gc.Stopped
        write(ck, report)

    monkeypatch.setattr(gc, "write_reports", stopped_at_the_final_write)
    with pytest.raises(gc.Stopped):
        gc.check(gs.Check("cpu", gs.PROFILES["cpu"], tmp_path, tmp_path, None), {"environment"}, 600, [])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["exit_code"] == 143 and report["sections"]["environment"]["status"] == "ok", report


def test_a_real_sigterm_mid_check_leaves_reports_naming_the_stopped_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--device", "cpu", "--only", "model"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "gpu_check.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the environment section's report: the model section has begun
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["exit_code"] == 143, report  # stopped in the model section, or as a report was written
    assert report["problems"] in ({"model": "error: stopped (SIGTERM)"}, {}), report
    assert report["sections"]["tensorrt"]["reason"] in ("not run: the check was interrupted", "not selected (--only)")
    assert "exit code 143" in (out / "gpu_check.md").read_text()


def test_a_work_folder_an_earlier_check_kept_is_reused(gpu_check, monkeypatch, tmp_path):
    gc, gs = gpu_check
    for name, fake in _fakes(gs, []).items():
        monkeypatch.setitem(gs.RUNNERS, name, fake)
    work = tmp_path / "work"
    for _ in range(2):  # the second run finds the first one's files and its mark
        assert gc.main(["--out", str(tmp_path / "out"), "--device", "cpu", "--work", str(work),
                        "--only", "environment"]) == 0
        (work / "model.pt").write_text("kept")
    assert (work / gc.WORK_MARK).is_file() and (tmp_path / "out" / "gpu_check.json").is_file()


def test_a_cuda_check_without_a_gpu_is_no_pass(gpu_check, monkeypatch, tmp_path):
    """Every section skipped for want of a GPU reported exit 0: a check against CPU-only PyTorch looked passed."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    gc, gs = gpu_check
    monkeypatch.setitem(gs.RUNNERS, "environment", _fakes(gs, [])["environment"])
    assert gc.main(["--out", str(tmp_path / "out"), "--only", "model"]) == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["problems"] == {"model": "error: RuntimeError: no CUDA GPU visible to PyTorch, so nothing can run "
                                           "on one (--device cpu is the dry run)"}


def test_a_report_that_cannot_be_written_is_one_line_exit_2(gpu_check, monkeypatch, tmp_path, capsys):
    """A full disk under --out was a traceback and exit 1, which the check's own codes read as a failed section."""
    from mde.errors import InputError

    gc, gs = gpu_check
    monkeypatch.setitem(gs.RUNNERS, "environment", _fakes(gs, [])["environment"])

    def full(ck, report):
        raise InputError("cannot write (No space left on device)", ck.out / "gpu_check.md")

    monkeypatch.setattr(gc, "write_reports", full)
    assert gc.main(["--out", str(tmp_path / "out"), "--device", "cpu", "--only", "environment"]) == 2
    err = capsys.readouterr().err
    assert err == f"gpu_check: error: {tmp_path / 'out' / 'gpu_check.md'}: cannot write (No space left on device)\n"
