"""The benchmark scripts answer bad arguments with one line and exit 2 (no usage block, no traceback), before any
work; their saved runs are reused only for the same settings and inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = [
    ("make_sample_figure.py", ["--count", "-1", "--out", "{tmp}/x.png"], "--count must be 1 to 16 (one figure row), got -1"),
    ("make_sample_figure.py", ["--size", "8", "--out", "{tmp}/x.png"], "--size must be 16 to 1024 pixels"),
    ("make_sample_figure.py", ["--seed", "-1", "--out", "{tmp}/x.png"], "--seed must be >= 0, got -1"),
    ("make_sample_figure.py", ["--out", "/proc/x.png"], "/proc/x.png: its folder is not writable"),
    ("make_sample_figure.py", ["--bogus", "1"], "unrecognized arguments: --bogus"),
    ("make_sample_figure.py", ["--out", "{tmp}/full"], "full: expected a .png file name in an existing folder"),
    ("bench_int8.py", ["--decoder", "nosuch"], "unknown --decoder nosuch; choose from report, unet"),
    ("bench_int8.py", ["--rounds", "0"], "--rounds must be >= 1, got 0"),
    ("bench_int8.py", ["--decoder", "report", "--decoder", "report"], "--decoder given twice: report report"),
    ("bench_runtime.py", ["--model", "{tmp}/model.onnx"], "--model and --checkpoint go together"),
    ("bench_runtime.py", ["--decoder", "nosuch"], "argument --decoder: invalid choice: 'nosuch'"),
    ("bench_export.py", ["--decoder", "nosuch"], "argument --decoder: invalid choice: 'nosuch'"),
    ("bench_runtime.py", ["--model", "{tmp}/nosuch.onnx", "--checkpoint", "{tmp}/nosuch.pt"],
     "nosuch.onnx: file not found"),
    ("bench_runtime.py", ["--model", "{tmp}/full", "--checkpoint", "{tmp}/nosuch.pt"],
     "full: is a folder; expected a file (model.onnx)"),
    ("bench_runtime.py", ["--threads", "100000"], "--threads must be in 0.."),  # torch.set_num_threads crashed
    ("bench_decoder_ideas.py", ["--data", "{tmp}/full"], "full: not a synthetic set (no meta.json)"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/full/notes.txt", "--world", "fixed-camera"],
     "notes.txt: not a folder; --world fixed-camera makes its set in a new folder"),  # was "File exists"
    ("bench_decoder_ideas.py", ["--data", "{tmp}/cutworld", "--world", "fixed-camera"],
     "cutworld/bench_world.json: not readable (Unterminated string"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/d", "--anatomy"], "--anatomy needs at least one trained run"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/d", "--epochs", "-1"], "--epochs must be >= 1, got -1"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/d", "--variants", "unet-taskenc"],
     "unet-taskenc start from a trained encoder: give --encoder-from RUN"),
    ("bench_train.py", ["--only", "decoders", "quality"], "--only decoders runs on its own"),
    ("bench_train.py", ["--only", "throughput", "--epochs", "3"], "--epochs is for --only decoders"),  # was ignored
    ("bench_train.py", ["--only", "quality", "--runs", "{tmp}/r"], "--runs is for --only decoders"),
    ("bench_train.py", ["--only", "quality", "--var=unet-flips"], "--variants is for --only decoders"),
    ("error_anatomy.py", ["--help", "--anatomy"], "it is run through bench_decoder_ideas.py"),  # said nothing, exit 0
    ("bench_train.py", ["--only", "decoders", "--epochs", "-1"], "--epochs must be >= 0"),
    ("bench_train.py", ["--only", "decoders", "--data", "{tmp}/d", "--runs", "{tmp}/full/notes.txt"],  # before the set
     "notes.txt: not a folder"),
    ("bench_train.py", ["--only", "quality", "--data", "{tmp}/full"], "full: not a synthetic set (no meta.json)"),
    ("bench_train.py", ["--only", "quality", "--data", "{tmp}/quickset"],
     "quickset: holds 120 / 20 images at 64 px, not the 2000 / 200 at 128 px this run needs (a --quick set?)"),
    ("bench_decoder_ideas.py", ["--data", "{tmp}/quickset", "--world", "fixed-camera"], "not the 2000 / 200 at 128 px"),
    ("bench_train.py", ["--only", "throughput", "--data", "{tmp}/bare"],  # an AttributeError or TypeError
     "bare/meta.json: records no image counts and size (not a set `mde data synth` made)"),
    ("run.py", ["--only", "synth", "--out", "{tmp}/nosuch/results.json"], "expected a file in an existing folder"),
    ("run.py", ["--only", "synth", "synth"], "--only names synth twice; each benchmark runs once"),
    ("run.py", ["--only", "synth", "--out", "/proc/results.json"], "its folder is not writable"),
]


@pytest.mark.parametrize(("script", "args", "message"), CASES, ids=[f"{c[0]}-{c[1][1]}" for c in CASES])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, script, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("not a dataset")
    (tmp_path / "quickset").mkdir()  # what `--quick` makes: not the benchmark's set
    (tmp_path / "quickset" / "meta.json").write_text('{"counts": {"train": 120, "val": 20}, "size": [64, 64]}')
    (tmp_path / "quickset" / "bench_world.json").write_text('{"world": "fixed-camera"}')
    (tmp_path / "cutworld").mkdir()  # a --world set whose marker was cut short
    (tmp_path / "cutworld" / "meta.json").write_text('{"counts": {"train": 2000, "val": 200}, "size": [128, 128]}')
    (tmp_path / "cutworld" / "bench_world.json").write_text('{"wor')
    (tmp_path / "bare").mkdir()  # a dataset of one's own: a meta.json with a depth range only
    (tmp_path / "bare" / "meta.json").write_text('{"max_depth": 20, "counts": [1, 2], "size": 64}')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr  # one line: no usage block
    assert done.stderr.startswith(f"{script}: error: "), done.stderr  # as cli_common.Parser promises
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "cutworld", "full", "quickset"]  # nothing written
    assert sorted(p.name for p in (tmp_path / "quickset").iterdir()) == ["bench_world.json", "meta.json"]


def test_a_saved_run_of_other_settings_is_not_reused_under_new_labels(tmp_path):
    """`--runs R --epochs 2` (or `--device cuda`) over 1-epoch CPU runs would print their figures as 2-epoch (or
    GPU) ones: refused, naming R/x."""
    import json

    sys.path.insert(0, str(BENCHMARKS))
    import bench_train

    from mde.errors import InputError

    run_dir = tmp_path / "unet-flips"
    run_dir.mkdir()
    settings = {**bench_train.QUALITY, **bench_train.QUICK, "epochs": 1, "patch": None}
    (run_dir / "bench.json").write_text(json.dumps({"settings": settings}))
    assert bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=1)["settings"] == settings  # reused
    with pytest.raises(InputError, match=r"unet-flips: holds a run trained with other settings \(epochs: 1, not 2\)"):
        bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=2)
    # `--device cuda` over CPU runs would label their figures as the GPU's (bf16, another data order)
    assert bench_train.device_settings("cpu") == {}  # the CPU runs keep the benchmark's own settings
    with pytest.raises(InputError, match=r"other settings \(device, workers: cpu, 1, not cuda, 4\)"):
        bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=1, device="cuda")


@pytest.mark.parametrize("content, says", [("", "not readable JSON"), ('{"settings": 1', "not readable JSON"),
                                            ("[]", 'no "settings" object')])
def test_a_damaged_run_summary_is_one_line(tmp_path, content, says):
    """A cut bench.json (it was written in place: a stop or a full disk) was a JSONDecodeError traceback, a list
    an AttributeError, for training over the folder and for loading its model (--anatomy, --encoder-from)."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench_train

    from mde.errors import InputError

    run_dir = tmp_path / "unet-flips"
    run_dir.mkdir()
    (run_dir / "bench.json").write_text(content)
    for use in (lambda: bench_train.train_variant(tmp_path, run_dir, {}, quick=True, epochs=1),
                lambda: bench_train.load_run(run_dir)):
        with pytest.raises(InputError, match=f"bench.json: not a run summary .*{says}.*remove the run's folder"):
            use()


def test_device_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_decoder_ideas.py"), "--data", str(tmp_path / "d"),
                           "--device", "cuda", "--quick"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--device cuda: PyTorch sees no CUDA GPU on this machine" in done.stderr
    assert not (tmp_path / "d").exists()  # no set made


def test_a_saved_run_from_another_dataset_is_not_reused(tmp_path):
    """The same --runs folder over another --data would label the old models' figures with the new data."""
    import json

    sys.path.insert(0, str(BENCHMARKS))
    import bench_train

    from mde.errors import InputError

    run_dir = tmp_path / "unet-flips"
    run_dir.mkdir()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(f'{{"max_depth": 20, "seed": "{name}"}}')
    settings = {**bench_train.QUALITY, **bench_train.QUICK, "epochs": 1, "patch": None}
    (run_dir / "bench.json").write_text(json.dumps({"settings": settings,
                                                    "inputs": bench_train.run_inputs(tmp_path / "a", settings)}))
    assert bench_train.train_variant(tmp_path / "a", run_dir, {}, quick=True, epochs=1)  # the same data: reused
    with pytest.raises(InputError, match="holds a run trained on another dataset"):
        bench_train.train_variant(tmp_path / "b", run_dir, {}, quick=True, epochs=1)
    for name in ("c", "d", "e"):  # c and d: one set made again in another (temporary) folder
        (tmp_path / name / "val" / "rgb").mkdir(parents=True)
        (tmp_path / name / "meta.json").write_text('{"max_depth": 20}')
        (tmp_path / name / "val" / "rgb" / "a.png").write_bytes(b"x" * (3 if name == "e" else 2))
    (run_dir / "bench.json").write_text(json.dumps({"settings": settings,
                                                    "inputs": bench_train.run_inputs(tmp_path / "c", settings)}))
    assert bench_train.train_variant(tmp_path / "d", run_dir, {}, quick=True, epochs=1)
    with pytest.raises(InputError, match="another dataset"):  # e: the same meta.json, other images
        bench_train.train_variant(tmp_path / "e", run_dir, {}, quick=True, epochs=1)


def test_scripts_end_on_ctrl_c_and_mde_errors_in_one_line(capsys, monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    from cli_common import run_main

    from mde.errors import InputError

    def interrupted():
        raise KeyboardInterrupt

    def refused():
        raise InputError("bad thing", "x.onnx")

    def unwritable():
        raise FileNotFoundError(2, "No such file or directory", "/proc/results.json")

    monkeypatch.setattr(sys, "argv", ["bench_x.py"])
    for main, code, line in ((interrupted, 130, "bench_x.py: interrupted"), (refused, 2, "x.onnx: bad thing"),
                             (unwritable, 2, "/proc/results.json: No such file or directory")):
        with pytest.raises(SystemExit) as stop:
            run_main(main)
        err = capsys.readouterr().err
        assert stop.value.code == code and line in err and err.count("\n") == 1, err


def test_bench_runtime_takes_only_the_fp32_onnx(tmp_path, tiny_export, tiny_checkpoint):
    for model in (tiny_export / "model.fp16.onnx", tiny_checkpoint):
        done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_runtime.py"), "--model", str(model),
                               "--checkpoint", str(tiny_checkpoint)], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 2 and "expected the FP32 ONNX" in done.stderr, done.stderr


def test_bench_runtime_refuses_a_model_exported_from_another_checkpoint(tmp_path, tiny_export, tiny_unet):
    """Its ORT-vs-torch difference and latency ratio would compare two different models."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_runtime.py"), "--quick", "--threads", "1",
                           "--model", str(tiny_export / "model.onnx"), "--checkpoint", str(tiny_unet.checkpoint)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    assert "model.onnx: exported from another model" in done.stderr and "Traceback" not in done.stderr


def test_cuda_decoder_speed_measures_each_decoder_in_turns_and_gives_ratios(monkeypatch):
    """bench_train's GPU training-speed comparison of the decoders (its CUDA half runs in tests/test_cuda.py)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    import bench_train

    calls = []

    def fake_rate(amp, dtype, batch, size, steps, backbone, decoder):
        calls.append((backbone, decoder))
        return {"report": 100.0, "unet": 80.0}[decoder] * (2 if backbone == "resnet18" else 1)

    monkeypatch.setattr(bench_train, "_cuda_images_per_s", fake_rate)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "fake GPU")
    out = bench_train.cuda_decoder_speed(False, ("report", "unet"))
    assert calls[:4] == [("resnet18", "report"), ("resnet18", "unet")] * 2  # in turns: load changes hit both
    assert out["resnet18_96px_batch16"] == {"report": {"train_images_per_s": 200.0},
                                            "unet": {"train_images_per_s": 160.0}, "unet_vs_report": 0.8}
    assert out["resnet50_224px_batch64"]["unet_vs_report"] == 0.8 and out["device"] == "fake GPU"
    assert len(calls) == 2 * len(bench_train.CUDA_TRAIN_SHAPES) * out["rounds"]


def test_the_speed_benchmarks_measure_the_default_decoder(tmp_path, monkeypatch):
    """bench_runtime, bench_export, bench_memory and the GPU check built the report decoder (ModelArgs' default, for
    old checkpoints) while `mde train` builds `unet`: the README's speed figures were of a network nobody trains."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_export
    import bench_memory
    import bench_runtime

    import mde.train.checkpoint as checkpoint
    from mde.runtime import read_metadata
    from mde.train.config import TrainConfig

    model, _ = bench_runtime.build_artifacts(tmp_path, backbone="resnet18", size=64)  # one export, end to end
    assert read_metadata(model).decoder == TrainConfig(data="d", out="o").decoder == "unet"
    built = []

    class Built(Exception):
        pass

    def record(path, args, *rest, **options):
        built.append(args.decoder)
        raise Built

    monkeypatch.setattr(checkpoint, "save_untrained", record)  # the others: what they build, not a run
    for build in (lambda: bench_export.run(quick=True), lambda: bench_export.run(quick=True, decoder="report"),
                  lambda: bench_memory._tiny_model(tmp_path), lambda: bench_runtime.build_artifacts(tmp_path / "r")):
        with pytest.raises(Built):
            build()
    assert built == ["unet", "report", "unet", "unet"]


def test_run_keeps_the_figures_of_finished_benchmarks_when_a_later_one_stops(tmp_path, monkeypatch):
    """results.json was written once all had run: Ctrl-C in the last of a run of hours lost every figure."""
    import json
    import types

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run as runner

    def stopped(quick: bool) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "bench_synth", types.SimpleNamespace(run=lambda quick: {"images_per_s": 9.0}))
    monkeypatch.setitem(sys.modules, "bench_export", types.SimpleNamespace(run=stopped))
    out = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "synth", "export", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        runner.main()
    saved = json.loads(out.read_text())
    assert saved["synth"]["images_per_s"] == 9.0 and saved["unfinished"] == ["export"] and "export" not in saved


def test_run_only_one_benchmark_keeps_the_others_and_says_where_each_ran(tmp_path, monkeypatch, capsys):
    """`run.py --only synth` after a full run wrote a results.json of synth alone: hours of figures gone. And no
    entry said whether it was a --quick smoke run, or on which CPU ("x86_64")."""
    import json
    import types

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run as runner

    out = tmp_path / "results.json"
    out.write_text(json.dumps({"machine": {"cpu": "x86_64"}, "synth": {"images_per_s": 1.0},
                               "memory": {"peak_mb": 5.0, "quick": True}, "unfinished": []}))
    monkeypatch.setitem(sys.modules, "bench_synth", types.SimpleNamespace(run=lambda quick: {"images_per_s": 9.0}))
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "synth", "--quick", "--out", str(out)])
    runner.main()
    saved = json.loads(out.read_text())
    assert saved["memory"] == {"peak_mb": 5.0, "quick": True, "machine": {"cpu": "x86_64"}}  # the file's machine
    assert saved["synth"]["images_per_s"] == 9.0
    assert saved["synth"]["quick"] is True and saved["synth"]["machine"] == saved["machine"]
    assert saved["machine"]["cpu"] != "x86_64" and "cores" in saved["machine"] and "cpu_flags" in saved["machine"]
    assert f"kept from {out}: memory (quick) (another machine)" in capsys.readouterr().out


def test_bench_int8_tables_label_their_columns_and_targets(monkeypatch, capsys):
    """Batch-8 latencies sat under a `b1 ms` header, a dRMSE of 3e-5 read +0.0000, the load was a Python dict and
    the targets unlabelled JSON lists."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_int8

    row = {"ms": 12.5, "vs_fp32": 0.5, "vs_pytorch": 0.3}
    result = {"load_average": {"start": [1.5, 1.0, 1.0], "end": [2.0, 1.0, 1.0]}, "decoders": {"unet": {
        "backbone": "resnet50", "image_size": 224, "threads": 2,
        "batch1": {"cpu": {**row, "integer_convs": "29/30"}}, "batch8": {"cpu": row},
        "parity": {"cpu": {"d_rmse": 3e-5, "d_ssim": -2e-6, "passed": True}},
        "targets": {"cpu_int8_over_fp32_b1": [0.5, 0.6, True], "cpu_int8_over_pytorch_b1": [0.7, 0.5, False],
                    "parity_pass": True}}}}
    bench_int8.report(result)
    out = capsys.readouterr().out
    assert "1-minute load average 1.5 at the start, 2.0 at the end" in out and "b1 ms" not in out
    assert "+3.00e-05 -2.00e-06 PASS" in out
    assert "target cpu_int8_over_fp32_b1: 0.500, at most 0.6: met" in out
    assert "target cpu_int8_over_pytorch_b1: 0.700, at most 0.5: MISSED" in out and "target parity_pass: True" in out


def test_decoder_ideas_compares_with_the_first_variant_without_unet_onecycle(monkeypatch, tmp_path):
    """The README's `--variants unet-flips report-flips` printed no ratio at all: they were to unet-onecycle only."""
    import argparse

    sys.path.insert(0, str(BENCHMARKS))
    import bench_decoder_ideas

    seen = []
    monkeypatch.setattr(bench_decoder_ideas, "decoders", lambda *a, reference=None, **k: seen.append(reference))
    for variants in (["unet-flips", "report-flips"], ["report", "unet-onecycle"]):
        bench_decoder_ideas.run(argparse.Namespace(encoder_from=None, anatomy=None, data=tmp_path, quick=True,
                                                   runs=None, variants=variants, epochs=1, device="cpu"))
    assert seen == [None, "unet-onecycle"]  # None: decoders' own default, the first variant


def test_bench_runtime_says_when_the_bare_model_call_timed_slower_than_predict(monkeypatch, capsys):
    """The bare call was timed apart from predict, which includes it: under a changing load it came out slower
    (16.5 ms against predict's 8.4), and figures 2 and 4 were divided by it without a word."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_runtime

    names = ("latency_ratio", "gemm_efficiency", "cold_start_ratio", "peak_rss_ratio", "pre_post_pct")
    measured = {"ort_predict_ms": 8.4, "torch_predict_ms": 20.0, "ort_infer_ms": 16.5, "ort_gflops_per_s": 36.0,
                "gemm_gflops_per_s": 100.0, "cold_start_runtime_s": 0.5, "cold_start_torch_s": 2.0,
                "peak_rss_runtime_mib": 100.0, "peak_rss_torch_mib": 400.0, "preprocess_ms": 0.1,
                "postprocess_ms": 0.1, "preprocess_480x640_ms": 1.0, "postprocess_480x640_ms": 1.0}
    result = {"machine": {"cpus": 2, "threads": 1, "torch": "2", "onnxruntime": "1"},
              "model": {"backbone": "resnet18", "decoder": "unet", "size": [64, 64], "gflops": 0.6,
                        "max_abs_diff_ort_vs_torch_m": 1e-6},
              "measured": measured, "figures": dict.fromkeys(names, 0.4), "targets": bench_runtime.TARGETS,
              "met": dict.fromkeys(names, True)}
    bench_runtime.report(result)
    assert "note: the bare model call (16.5 ms) timed slower than predict, which includes it (8.4 ms)" in \
        capsys.readouterr().out
    bench_runtime.report({**result, "measured": {**measured, "ort_infer_ms": 8.0}})
    assert "bare model call" not in capsys.readouterr().out


def test_bench_int8_says_when_its_ms_and_ratio_columns_disagree(monkeypatch):
    """Under a changing load the ms column (a median over rounds) said 1.52x FP32 and the ratio column (a median of
    each round's ratio) 0.73x, side by side, without a word."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_int8

    rows = {"fp32": {"ms": 85.1, "vs_fp32": 1.0}, "int8 cpu": {"ms": 129.6, "vs_fp32": 0.726},
            "int8 tensorrt": {"ms": 90.0, "vs_fp32": 1.02}}
    assert bench_int8.unsteady_rows(rows) == {"int8 cpu": (pytest.approx(129.6 / 85.1), 0.726)}


def test_bench_export_and_bench_train_print_json_alone_on_stdout(capsys, monkeypatch):
    """Their figures are one JSON object on stdout (`| jq`, `> out.json`); what they say on the way goes to stderr
    (it came first on stdout, so the JSON did not parse)."""
    import json
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_export
    import bench_train

    import mde.export.exporter as exporter
    import mde.train.checkpoint as checkpoint

    artifact = SimpleNamespace(precision="fp32", seconds=1.0, size_bytes=2**20, p99_abs_diff=1e-6, max_abs_diff=2e-6,
                               p99_over_range=5e-8)
    monkeypatch.setattr(checkpoint, "save_untrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(exporter, "export_checkpoint", lambda cfg: [artifact])
    monkeypatch.setattr(sys, "argv", ["bench_export.py", "--quick"])
    bench_export.main()
    out, err = capsys.readouterr()
    assert json.loads(out)["fp32"]["size_mib"] == 1.0 and "fp32:" in err

    monkeypatch.setattr(bench_train, "throughput", lambda root, quick: {"ratio": 3.0})
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--quick", "--only", "throughput"])
    bench_train.main()
    out, err = capsys.readouterr()
    assert json.loads(out)["throughput"]["ratio"] == 3.0 and "throughput" in err
