"""Output when stderr is not a terminal (CI logs, `make demo > log`): plain whole lines, never wrapped."""

from __future__ import annotations

from mde.console import PlainProgress, info, make_progress, track


def test_plain_progress_is_throttled_whole_lines():
    lines: list[str] = []
    with PlainProgress(interval=3600, write=lines.append) as progress:
        task = progress.add_task("calibrate", total=200, info="entropy")
        for _ in range(200):
            progress.advance(task)
    assert lines == ["calibrate: 200/200 (100%) 00:00 entropy"]


def test_plain_progress_reports_where_an_interrupted_task_stopped():
    lines: list[str] = []
    progress = PlainProgress(interval=3600, write=lines.append)
    progress.start()
    task = progress.add_task("epoch 1/8", total=75, completed=0)
    progress.update(task, completed=30, info="loss 0.41")
    progress.stop()
    assert lines == ["epoch 1/8: 30/75 (40%) 00:00 loss 0.41"]


def test_without_a_terminal_progress_is_plain_and_lines_are_not_wrapped(capsys):
    assert isinstance(make_progress(), PlainProgress)  # pytest's captured stderr is not a terminal
    list(track(range(3), "predict"))
    long_message = "mde: skipped " + "/very/deep/folder" * 12 + "/image.png: not an image"
    info(long_message)
    err = capsys.readouterr().err.splitlines()
    assert err == ["predict: 3/3 (100%) 00:00", long_message]


def test_with_stderr_closed_error_lines_stay_off_stdout(tmp_path):
    """`mde ... 2>&-` (Python sees sys.stderr as None): the error line goes nowhere,
    not into stdout, where a caller reads JSON or depth data; the exit code still says what happened."""
    import subprocess
    import sys

    missing = tmp_path / "missing.pt"
    result = subprocess.run(["bash", "-c", f'"{sys.executable}" -m mde eval "{missing}" --data "{tmp_path}" 2>&-'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""


def test_an_empty_argument_is_refused_before_it_reads_as_the_current_folder(cli, tmp_path, monkeypatch):
    """`--out "$OUT"` with OUT unset: the path "" is ".", and `data synth ""` wrote a dataset into the working
    folder; every form of an empty argument is one line, exit 2, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    for args, said in ((["data", "synth", "", "--train", "2", "--val", "2"], "an empty argument ('') comes after synth"),
                       (["predict", "my model.onnx", "", "--out", "o"], "an empty argument ('') comes after 'my model.onnx'"),
                       ([""], "an empty argument ('') comes first"),
                       (["predict", "a\nb.onnx", ""], "an empty argument ('') comes after 'a\\nb.onnx'"),
                       (["data", "synth", "--force", ""], "an empty argument ('') comes after --force"),
                       (["predict", "model.onnx", "x.png", "--out", ""], "an empty argument ('') comes after --out"),
                       (["parity", "best.pt", "model.onnx", "--data="], "--data is given an empty value"),
                       (["info", "--", ""], "an empty argument ('') comes after --")):
        result = cli(*args)
        assert result.code == 2 and result.err == f"mde: error: {said}; give it a value (an unset shell " \
            "variable?)\n", result.err
    assert list(tmp_path.iterdir()) == []
    assert "is given an empty value" not in cli("info", "--json=a=").err  # a value that ends in =: not empty
