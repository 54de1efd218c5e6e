"""Stopped by Ctrl-C or SIGTERM mid-work, a command says so in one line and leaves nothing half-made.

The signal goes to the whole process group, as a terminal's Ctrl-C and `timeout` send it, so worker
processes (the synth pool's, a DataLoader's) receive it too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest


def _stop_when(argv: list[str], ready: Callable[[], bool], signum: int) -> tuple[int, str]:
    """Run `mde ARGV` in its own process group; once `ready()`, send `signum` to the group.

    Returns the exit code and stderr. Fails the test when the command ends before `ready()`.
    """
    proc = subprocess.Popen([sys.executable, "-m", "mde", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"`mde {argv[0]}` ended before it could be stopped: {proc.stderr.read()}"
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _has_files(pattern: str, folder: Path) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGTERM, 143, "mde: terminated"),
                                                      (signal.SIGINT, 130, "mde: interrupted")],
                         ids=["sigterm", "sigint"])
def test_synth_stopped_mid_way_leaves_no_folder_and_one_line(tmp_path, signum, code, line):
    out = tmp_path / "set"
    argv = ["data", "synth", str(out), "--train", "2000", "--val", "8", "--size", "64", "--workers", "2"]
    returncode, err = _stop_when(argv, _has_files(".synth-*/train/rgb/*.png", out), signum)
    assert returncode == code, err
    assert err.strip().splitlines()[-1] == line
    assert "Traceback" not in err and "PoolWorker" not in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_export_terminated_mid_way_leaves_no_folder(tmp_path, tiny_checkpoint):
    out = tmp_path / "export"
    argv = ["export", str(tiny_checkpoint), "--out", str(out), "--precision", "fp32", "--precision", "fp16"]
    returncode, err = _stop_when(argv, _has_files(".mde-export-*", out), signal.SIGTERM)
    assert returncode == 143, err
    assert err.strip().splitlines()[-1] == "mde: terminated" and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def test_an_error_that_sigterm_causes_is_reported_as_terminated(cli, monkeypatch, tmp_path):
    """A DataLoader whose workers died of the same SIGTERM raises its own RuntimeError over `Terminated`
    (seen on `mde train` stopped by `timeout`): that is the stop, not an internal error."""
    import mde.runtime.artifact

    handler_after_first = []

    def killed_mid_way(path):
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            handler_after_first.append(signal.getsignal(signal.SIGTERM))
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.") from None

    monkeypatch.setattr(mde.runtime.artifact, "inspect_artifact", killed_mid_way)
    (tmp_path / "model.onnx").write_bytes(b"x")
    result = cli("info", tmp_path / "model.onnx")
    assert result.code == 143 and result.err.strip() == "mde: terminated", result.err
    assert handler_after_first == [signal.SIG_IGN]  # the copy `timeout` sends right after is the same stop
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back once the command ended


def test_a_second_sigterm_is_the_same_stop_for_a_moment_then_stops_at_once(monkeypatch):
    """GNU timeout sends SIGTERM to the process and then to its group: the copy must not kill the run before it
    cleans up; a SIGTERM later than that stops the process at once, even inside native code (C-level default)."""
    import ctypes
    import time

    from mde import cli

    monkeypatch.setattr(cli, "SAME_STOP_S", 0.05)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(cli.Terminated):
            cli._raise_terminated(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        time.sleep(0.5)
        assert ctypes.CDLL(None).signal(signal.SIGTERM, 1) == 0  # the disposition the timer left: SIG_DFL (0)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_the_sigterm_timer_ends_with_the_command(cli, monkeypatch, tmp_path):
    """An embedding program's SIGTERM handler, installed after an in-process `mde` stopped by SIGTERM, is not
    replaced a second later by the command's timer."""
    import ctypes
    import time

    import mde.runtime.artifact
    from mde import cli as cli_module

    monkeypatch.setattr(cli_module, "SAME_STOP_S", 0.05)
    monkeypatch.setattr(mde.runtime.artifact, "inspect_artifact", lambda path: signal.raise_signal(signal.SIGTERM))
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert cli("info", tmp_path / "model.onnx").code == 143
    signal.signal(signal.SIGTERM, lambda *_: None)  # the host's own handler
    try:
        time.sleep(0.3)
        assert ctypes.CDLL(None).signal(signal.SIGTERM, 1) != 0  # still the C handler Python installed, not SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_what_breaks_on_the_way_out_says_nothing(monkeypatch, capsys):
    """A stopped run's DataLoader, also reached by the signal, fails in its __del__: no "Exception ignored" block."""

    from mde import cli

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False})
    before = sys.unraisablehook
    stopped = cli._stopped()
    assert stopped.code == 130 and sys.unraisablehook is not before
    error = RuntimeError("DataLoader worker (pid 123) is killed by signal: Terminated")
    sys.unraisablehook(SimpleNamespace(exc_type=RuntimeError, exc_value=error, exc_traceback=None,
                                       err_msg="Exception ignored in", object=None))
    assert capsys.readouterr().err == "mde: interrupted\n"


@pytest.mark.parametrize("rank, said", [("0", "mde: terminated\n"), ("1", "")])
def test_under_torchrun_rank_0_says_the_stop(monkeypatch, capsys, rank, said):
    """Ctrl-C reaches every torchrun process, and torchrun stops the others with SIGTERM: each said so ("mde:
    interrupted" twice, or an "mde: terminated" under rank 0's error line)."""
    from mde import cli

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": True, "command": "train"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert cli._stopped().code == 128 + signal.SIGTERM and capsys.readouterr().err == said


def test_a_lost_torchrun_peer_is_one_line(monkeypatch, capsys):
    """Under torchrun, a rank whose peer went away says so in one line, not gloo's RuntimeError."""
    from mde import cli

    def lost() -> None:
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:29500")

    monkeypatch.setattr(cli, "app", lambda **_kwargs: lost())
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})
    monkeypatch.setattr(cli, "RANK_GRACE_S", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped:
        cli._run(["train"])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == ("mde: error: rank 1: another training process stopped, so this one "
                                               "cannot go on (its own line, or torchrun's summary where it was "
                                               "killed, says why)")
    def broken_pipe() -> None:
        raise BrokenPipeError(32, "Broken pipe")  # stdout piped to `head`: no peer of ours

    monkeypatch.setattr(cli, "app", lambda **_kwargs: broken_pipe())
    with pytest.raises(SystemExit):
        cli._run(["train"])
    assert "another training process" not in capsys.readouterr().err
    monkeypatch.setattr(cli, "app", lambda **_kwargs: lost())
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the same error is no lost peer
    with pytest.raises(SystemExit):
        cli._run(["train"])
    assert "mde: internal error: RuntimeError" in capsys.readouterr().err


def test_rank_0_that_lost_the_rank_which_failed_ends_in_silence_when_torchrun_stops_it(monkeypatch, capsys, tmp_path):
    """A file only rank 1 read was bad: rank 1 said so, and rank 0, whose collective then failed, added "another
    training process stopped" at once, two lines for one error. Rank 0 now waits as the others do; stopped by
    torchrun after the other said its error, it ends in silence. A peer that died without a word (killed), or no
    stop at all, still gets rank 0's line."""
    import tempfile

    from mde import cli

    def lost() -> None:
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    def stopped_by_torchrun(_seconds: float) -> None:
        cli._state["terminated"] = True  # as the SIGTERM handler does
        raise cli.Terminated

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cli, "app", lambda **_kwargs: lost())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-2")
    for peer_spoke, stopped, code in ((True, True, 128 + signal.SIGTERM), (False, True, 1), (False, False, 1)):
        monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})
        if peer_spoke:
            cli._note_own_failure()  # as rank 1 does when it says its error
        monkeypatch.setattr(cli.time, "sleep", stopped_by_torchrun if stopped else (lambda _seconds: None))
        with pytest.raises(SystemExit) as ended:
            cli._run(["train"])
        said = capsys.readouterr().err
        assert ended.value.code == code, (peer_spoke, stopped, said)
        assert (said == "") == peer_spoke and ("another training process stopped" in said) == (not peer_spoke)
    assert not list(tmp_path.iterdir())


def test_rank_0_stopped_after_another_rank_said_its_error_says_nothing(monkeypatch, capsys, tmp_path):
    """Rank 1 said its own error (a file only it read), then torchrun stopped rank 0 with SIGTERM, which said
    "mde: terminated": a second line, and a stop no user made. A stop with no such error is still said."""
    import tempfile

    from mde import cli
    from mde.errors import InputError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cli.time, "sleep", lambda _seconds: None)  # rank 1's wait: not stopped
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setenv("MASTER_PORT", "29500")

    def bad_file() -> None:
        raise InputError("truncated or corrupt image", "train/rgb/000041.png")

    monkeypatch.setattr(cli, "app", lambda **_kwargs: bad_file())
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        cli._run(["train"])
    assert capsys.readouterr().err == "mde: error: rank 1: train/rgb/000041.png: truncated or corrupt image\n"
    monkeypatch.setenv("RANK", "0")
    cli._state["terminated"] = True
    assert cli._stopped().code == 128 + signal.SIGTERM and capsys.readouterr().err == ""
    assert not list(tmp_path.iterdir())  # the note is read once and removed
    assert cli._stopped().code == 128 + signal.SIGTERM and capsys.readouterr().err == "mde: terminated\n"


def test_a_torchrun_rank_other_than_0_waits_then_says_its_error_in_one_write(monkeypatch):
    """Every torchrun process met the same bad input and said it, in two writes each, spliced on the terminal
    ("mde: error: D: dataset not foundmde: error: D: dataset not found"). Rank 0 says it at once; another rank
    first waits (torchrun stops it once rank 0 has failed), then says it with its rank, in one write."""
    from mde import cli
    from mde.errors import InputError

    writes: list[str] = []
    waits: list[float] = []
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(write=writes.append, flush=lambda: None))
    monkeypatch.setattr(cli.time, "sleep", waits.append)
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})

    def bad_input() -> None:
        raise InputError("dataset not found", "D")

    monkeypatch.setattr(cli, "app", lambda **_kwargs: bad_input())
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", "mde: error: D: dataset not found\n"), ("1", "mde: error: rank 1: D: dataset not found\n")):
        monkeypatch.setenv("RANK", rank)
        writes.clear()
        with pytest.raises(SystemExit) as stopped:
            cli._run(["train"])
        assert stopped.value.code == 2 and writes == [said]
    assert waits == [cli.RANK_GRACE_S]


def test_a_torchrun_rank_stopped_while_it_waits_says_nothing(monkeypatch, capsys):
    """torchrun stops the other processes (SIGTERM, raised as `Terminated`) once rank 0 has failed and said why:
    they end in silence."""
    from mde import cli
    from mde.errors import InputError

    def stopped_by_torchrun(_seconds: float) -> None:
        cli._state["terminated"] = True  # as the SIGTERM handler does
        raise cli.Terminated

    def bad_input() -> None:
        raise InputError("dataset not found", "D")

    monkeypatch.setattr(cli.time, "sleep", stopped_by_torchrun)
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})
    monkeypatch.setattr(cli, "app", lambda **_kwargs: bad_input())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as stopped:
        cli._run(["train"])
    assert stopped.value.code == 128 + signal.SIGTERM and capsys.readouterr().err == ""

    def ctrl_c(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", ctrl_c)
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "train"})
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: the status a shell expects of it, not SIGTERM's
        cli._run(["train"])
    assert stopped.value.code == 130 and capsys.readouterr().err == ""


def test_only_training_under_torchrun_waits_for_rank_0(monkeypatch, capsys):
    """RANK and WORLD_SIZE reach whatever a rank's script starts (`mde eval` on its checkpoint): that command speaks
    for itself, at once and without a rank."""
    from mde import cli
    from mde.errors import InputError

    def bad_input() -> None:
        raise InputError("model file not found", "m.onnx")

    monkeypatch.setattr(cli.time, "sleep", None)  # no wait
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False, "command": "eval"})
    monkeypatch.setattr(cli, "app", lambda **_kwargs: bad_input())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        cli._run(["eval", "m.onnx"])
    assert capsys.readouterr().err == "mde: error: m.onnx: model file not found\n"


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("args", [["train", "--help"], ["--version", "train"]])
def test_under_torchrun_only_rank_0_prints_help_and_version(monkeypatch, capsys, rank, args):
    """`torchrun --nproc-per-node N -m mde.train --help` printed the help N times over."""
    from mde import cli

    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() points a rank's at os.devnull for good: restored
    monkeypatch.setattr(cli, "_state", {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    try:
        cli.main(args)
    except SystemExit as done:
        assert done.code in (0, None)
    out = capsys.readouterr().out
    assert ("Usage" in out or "mde" in out) if rank == "0" else out == "", out[:200]


@pytest.mark.slow
def test_under_torchrun_bad_input_is_said_once(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "mde.train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode != 0
    assert [line for line in done.stderr.splitlines() if "mde:" in line] == [
        f"mde: error: {tmp_path / 'none'}: dataset not found"], done.stderr[-3000:]


@pytest.mark.parametrize("module, installed, hint", [
    ("torch", False, "this command needs torch, which is not installed; in the mde checkout: pip install -e '.[train]'"),
    ("onnx.helper", False, "this command needs onnx, which is not installed; pip install onnx (or in the mde "
                           "checkout: pip install -e '.[train]')"),
    ("onnx.reference", True, "onnx.reference is missing from the installed onnx (too old?); in the mde checkout: "
                             "pip install -U -e '.[train]'"),
])
def test_a_runtime_only_install_says_what_to_install(monkeypatch, capsys, module, installed, hint):
    """`mde train` / `export` / `calibrate` without the train extra: one line naming the package, exit 2."""
    import importlib.util

    from mde import cli

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *_: object() if installed else None)

    def missing() -> None:
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(cli, "app", lambda **_kwargs: missing())
    monkeypatch.setattr(cli, "_state", {"verbose": False, "terminated": False})
    with pytest.raises(SystemExit) as stopped:
        cli._run(["train"])
    assert stopped.value.code == 2 and capsys.readouterr().err.strip() == f"mde: error: {hint}"


def test_ctrl_c_while_the_cli_imports_is_one_line():
    """The console script's first moments (importing typer, rich, ...) end like the rest: one line, exit 130."""
    code = ("import sys, importlib.abc\n"
            "class Interrupted(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'mde.cli':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupted())\n"
            "from mde import entry\n"
            "entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (130, "mde: interrupted\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_process_exits_ends_it_at_once_with_the_commands_status(sig):
    """A shutdown that waits (a thread that does not end) is still stopped by Ctrl-C or SIGTERM, and the
    process ends with the command's status, not the signal's."""
    code = ("import sys, threading, time\n"
            "import mde.cli\n"
            "def main():\n"
            "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "    print('done', flush=True)\n"
            "    sys.exit(3)\n"
            "mde.cli.main = main\n"
            "from mde import entry\n"
            "entry()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "done\n"
    time.sleep(0.5)  # into the interpreter's wait for the thread
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, err) == (3, "")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_after_the_command_ended_changes_nothing(sig):
    """Ctrl-C or SIGTERM in the second of interpreter shutdown after a finished command killed the process
    without a word (a traceback from an exit handler, or death by the signal): it ended, so it says nothing."""
    code = ("import atexit, os, signal, time\n"
            "import mde.cli\n"
            "mde.cli.main = lambda: print('done')\n"
            f"atexit.register(lambda: (os.kill(os.getpid(), {int(sig)}), time.sleep(0.3)))\n"
            "from mde import entry\n"
            "entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_python_tears_down_its_modules_changes_nothing(sig):
    """After the exit handlers Python gives the signals their default action back, then tears down its modules
    (a second with torch and ONNX Runtime loaded): a stop there killed a finished `mde info --json` with 130 or 143
    and not a word, its JSON whole on stdout. Nor may a teardown that hangs (a destructor waiting on a device)
    keep a finished command from ending: the process leaves before it."""
    code = ("import os, signal, sys, time, types\n"
            "import mde.cli\n"
            "mde.cli.main = lambda: print('done')\n"
            "class TornDownLate:\n"
            "    def __del__(self):\n"
            f"        os.kill(os.getpid(), {int(sig)})\n"
            "        time.sleep(60)\n"
            "module = types.ModuleType('late')\n"  # deleted with the modules, after the exit handlers
            "module.late = TornDownLate()\n"
            "sys.modules['late'] = module\n"
            "del module\n"
            "from mde import entry\n"
            "entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_synth_stopped_like_gnu_timeout_stops_cleanly(tmp_path, sig):
    """`timeout` signals the process and then its whole group, workers included: a worker killed while it
    waited for work used to hang multiprocessing.Pool's terminate(), and the copy of the signal killed the run
    before it removed its scratch folder. One line, 130/143, nothing left, in seconds."""
    import subprocess
    import sys
    import time

    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "mde", "data", "synth", str(out), "--train", "4000", "--val", "0",
                             "--size", "64", "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".synth-") and any(p.rglob("*.png")) for p in out.glob(".*")):
        assert proc.poll() is None and time.monotonic() < deadline, "synth ended before it rendered"
        time.sleep(0.05)
    os.kill(proc.pid, sig)  # as GNU timeout does: the process, then its group (here a moment later, so that
    time.sleep(0.05)        # the copy lands while the run cleans up, as it does when timeout's two kills race)
    os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("synth hung after the signal") from None
    # 128 + sig, or -sig where the copy landed once the command had ended (a shell shows 130/143 for both)
    assert proc.returncode in (128 + sig, -sig), err
    assert err.strip().splitlines()[-1] in ("mde: terminated", "mde: interrupted"), err
    assert "Traceback" not in err, err  # the executor's manager thread once printed an InvalidStateError
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_synths_pool_lets_go_of_workers_killed_from_outside():
    """A worker killed while it waits for work (as `timeout`'s group signal kills them) once left
    multiprocessing.Pool's terminate() waiting forever on a lock the dead worker held."""
    import subprocess
    import sys

    code = """if True:
        import multiprocessing, os, signal
        from mde.data.synth import _pool
        try:
            with _pool(2) as pool:
                list(pool.map(abs, range(4)))  # both workers started, now idle
                for child in multiprocessing.active_children():
                    if child.name != "resource_tracker":
                        os.kill(child.pid, signal.SIGKILL)
                raise RuntimeError("stopped")
        except RuntimeError:
            print("let go")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "let go", done.stderr[-2000:]


def test_synths_pool_stops_running_work_at_once_after_an_error():
    """A stop or an error does not wait out the chunks the workers are rendering (seconds each at a large
    --size); the workers are killed, SIGKILL, as a SIGTERM mde was started ignoring would not reach them."""
    import subprocess
    import sys

    code = """if True:
        import signal, time
        from mde.data.synth import _pool
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the workers
        started = time.monotonic()
        try:
            with _pool(2) as pool:
                pool.map(time.sleep, [60, 60])
                time.sleep(1)  # both running
                raise RuntimeError("stopped")
        except RuntimeError:
            print(round(time.monotonic() - started))
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=45, check=False)
    assert done.returncode == 0 and int(done.stdout) < 20, done.stderr[-2000:]


def test_a_synth_worker_killed_from_outside_is_one_line(tmp_path):
    """Not a stop of mde (only a worker died: the out-of-memory killer, say): one line naming the cause."""
    import psutil

    out = tmp_path / "set"
    proc = subprocess.Popen([sys.executable, "-m", "mde", "data", "synth", str(out), "--train", "4000", "--val", "0",
                             "--size", "64", "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(out.glob(".synth-*/train/rgb/*.png")):
        assert proc.poll() is None and time.monotonic() < deadline, "synth ended before it rendered"
        time.sleep(0.05)
    for child in psutil.Process(proc.pid).children():
        try:  # a child that ended meanwhile (it was short-lived) has no cmdline to read
            if "resource_tracker" not in " ".join(child.cmdline()):
                child.kill()
        except psutil.NoSuchProcess:
            continue
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("mde: error: a rendering worker stopped")
    assert not out.exists() or not any(out.iterdir())
