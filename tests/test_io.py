"""Atomic writes: a symlink at the output is replaced (what it points to is left alone), a device or FIFO is
written through; the output lock cannot be turned against another file; small files are read without blocking;
scratch folders go however a run ends."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from mde.io import write_json_atomic


def test_a_symlink_is_replaced_and_its_target_left_alone(tmp_path):
    target, link = tmp_path / "t.json", tmp_path / "l.json"
    target.write_text("old")
    link.symlink_to(target)
    write_json_atomic(link, {"a": 1})
    assert not link.is_symlink() and json.loads(link.read_text()) == {"a": 1}
    assert target.read_text() == "old"


def test_a_dangling_symlink_creates_nothing_where_it_points(tmp_path):
    link, elsewhere = tmp_path / "l.json", tmp_path / "victim" / "new.onnx"
    elsewhere.parent.mkdir()
    link.symlink_to(elsewhere)
    write_json_atomic(link, {"a": 1})
    assert json.loads(link.read_text()) == {"a": 1} and not elsewhere.exists()


def test_stdout_is_written_into_not_replaced(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "captured.json"
    out.write_text("")
    inode = out.stat().st_ino
    code = "from mde.io import write_json_atomic; write_json_atomic('/dev/stdout', {'a': 1})"
    with open(out, "a") as fh:  # /dev/stdout -> /proc/self/fd/1 -> this regular file
        subprocess.run([sys.executable, "-c", code], stdout=fh, check=True)
    assert json.loads(out.read_text()) == {"a": 1}
    assert out.stat().st_ino == inode  # the shell's file itself, not a new file renamed over it


def test_links_to_a_fifo_or_a_folder_are_replaced_like_any_link(tmp_path):
    import subprocess
    import sys

    os.mkfifo(tmp_path / "ff")
    (tmp_path / "d").mkdir()
    code = ("import sys; from mde.io import write_json_atomic\n"
            "for link in sys.argv[1:]: write_json_atomic(link, {'a': 1})")
    links = []
    for target in ("ff", "d"):
        links.append(tmp_path / f"to-{target}.json")
        links[-1].symlink_to(tmp_path / target)
    # in a process of its own: a write through the FIFO link would block for ever
    subprocess.run([sys.executable, "-c", code, *map(str, links)], check=True, timeout=60)
    for link in links:
        assert not link.is_symlink() and json.loads(link.read_text()) == {"a": 1}
    assert (tmp_path / "ff").is_fifo() and (tmp_path / "d").is_dir()


def test_a_stream_keeps_what_the_shell_wrote_before_and_its_name_is_never_replaced(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "run.log"
    log.write_text("old line\n")
    code = "from mde.io import write_json_atomic; write_json_atomic('//dev/../dev/stdout', {'a': 1})"
    with open(log, "a") as fh:  # `>> run.log`; and the name spelled oddly is still the stream
        subprocess.run([sys.executable, "-c", code], stdout=fh, check=True, timeout=60)
    assert log.read_text().startswith("old line\n") and json.loads(log.read_text()[9:]) == {"a": 1}
    closed = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, timeout=60, check=False, close_fds=True,
                            preexec_fn=lambda: os.close(1))  # `>&-`
    assert closed.returncode != 0 and "names a closed stream" in closed.stderr
    assert Path("/dev/stdout").is_symlink()  # the system's link, not a file renamed over it


def test_deferred_signals_leave_an_ignored_signal_alone():
    import signal

    from mde.io import deferred_signals

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with deferred_signals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_the_lock_never_follows_a_planted_link(tmp_path, monkeypatch):
    import hashlib

    from mde.errors import InputError
    from mde.io import claim_output

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    victim, out = tmp_path / "victim.conf", tmp_path / "out"
    victim.write_text("IMPORTANT")
    locks = tmp_path / "tmp" / f"mde-locks-{os.getuid()}"
    locks.mkdir(parents=True, mode=0o700)
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:20]
    (locks / f"{key}.lock").symlink_to(victim)
    with pytest.raises(InputError, match="output lock"), claim_output(out):
        pass
    assert victim.read_text() == "IMPORTANT"

    (locks / f"{key}.lock").unlink()
    locks.chmod(0o777)  # a folder others may write in is refused too
    with pytest.raises(InputError, match="not a private folder"), claim_output(out):
        pass
    locks.chmod(0o700)
    with claim_output(out):  # and a private one works
        pass


def test_small_files_refuse_fifos_and_devices_without_blocking(tmp_path):
    from mde.io import read_small_text

    fifo = tmp_path / "t.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(OSError, match="not a regular file"):
            read_small_text(path)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(OSError, match="MiB"):
        read_small_text(big, limit=1024)


def test_a_link_loop_is_one_input_error(tmp_path):
    from mde.errors import InputError
    from mde.io import check_output_file, resolved

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for call in (lambda: resolved(tmp_path / "a"), lambda: check_output_file(tmp_path / "a", "--json", [])):
        with pytest.raises(InputError):
            call()


def test_a_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    write_json_atomic(fifo, {"a": 1})
    reader.join(timeout=10)
    assert json.loads(received[0]) == {"a": 1}
    assert fifo.is_fifo()  # still the FIFO, not a regular file put in its place


def test_json_is_strict_nan_becomes_null(tmp_path):
    from mde.io import json_safe

    assert json_safe({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x"}) == {"a": None, "b": [None, 1.5], "c": "x"}
    write_json_atomic(tmp_path / "r.json", {"rmse": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: 1 / 0) == {"rmse": None}


def test_a_scratch_folder_goes_even_when_a_stop_lands_right_after_it_is_made(tmp_path, monkeypatch):
    """SIGTERM raises wherever Python is: between making export's or synth's staging folder and entering
    the block that removes it (mkdtemp's gap), a stop left `.mde-export-*` behind (a flaky signal test)."""
    from mde.io import scratch_folder

    real_mkdir = Path.mkdir

    def mkdir_then_stop(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_stop)
    with pytest.raises(KeyboardInterrupt), scratch_folder(tmp_path, ".mde-export-"):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["full", "ctrl-c"])
def test_replace_together_is_all_or_none(tmp_path, monkeypatch, stop):
    """A rename that fails half-way (or a stop Python raises there) puts the old entries back, and the new ones
    back in their staging folder."""
    from mde import io

    out, stage = tmp_path / "out", tmp_path / "stage"
    out.mkdir()
    stage.mkdir()
    for name in ("a.onnx", "golden.npz", "stale.onnx"):
        (out / name).write_text(f"old {name}")
    (stage / "a.onnx").write_text("new a")
    (stage / "golden.npz").write_text("new golden")
    moves = [(stage / "a.onnx", out / "a.onnx"), (None, out / "stale.onnx"), (stage / "golden.npz", out / "golden.npz")]
    real_replace = os.replace

    def fail_on_golden(src, dst):
        if Path(src) == stage / "golden.npz":
            raise stop
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", fail_on_golden)
    with pytest.raises(type(stop)):
        io.replace_together(moves, stage / "old")
    assert {p.name: p.read_text() for p in out.iterdir()} == {n: f"old {n}" for n in ("a.onnx", "golden.npz",
                                                                                       "stale.onnx")}
    assert (stage / "a.onnx").read_text() == "new a"
    monkeypatch.setattr(io.os, "replace", real_replace)
    io.replace_together(moves, stage / "old")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.onnx": "new a", "golden.npz": "new golden"}


def test_deferred_signals_hold_ctrl_c_until_the_block_ends():
    import signal

    from mde.io import deferred_signals

    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            signal.raise_signal(signal.SIGINT)
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back


def test_deferred_signals_give_sigterm_back_before_ctrl_c(monkeypatch):
    import signal

    from mde.io import deferred_signals

    given = []
    monkeypatch.setattr(signal, "raise_signal", given.append)
    with deferred_signals():
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # as the interpreter calls a handler
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert given == [signal.SIGTERM]


def test_stale_scratch_folders_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from mde.io import remove_stale_scratch

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    kept = [f".synth-{os.getpid()}-4567ef0123456789", ".synth-notes", ".synth-2020-backup",  # live; no scratch names
            ".synth-99999999999999999999-0123456789abcdef"]  # no pid: os.kill would overflow
    for name in [f".synth-{dead}-0123456789abcdef", *kept]:
        (tmp_path / name).mkdir()
    remove_stale_scratch(tmp_path, ".synth-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_scratch_folder_whose_owner_holds_its_lock_is_kept_whatever_its_pid(tmp_path, monkeypatch):
    """Containers sharing /tmp see each other's scratch folders but not their processes: a live calibration's
    folder, named by a pid this namespace does not have, was removed by the next run's sweep."""
    import subprocess
    import sys
    import tempfile

    from mde.io import remove_stale_scratch, temp_scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    elsewhere = tmp_path / f"mde-x-{dead}-0123456789abcdef"  # as another namespace's process would name it
    with temp_scratch("mde-x-") as folder:
        folder.rename(elsewhere)  # its lock goes with it
        remove_stale_scratch(tmp_path, "mde-x-")
        assert elsewhere.is_dir(), "a folder whose owner runs was removed"
        elsewhere.rename(folder)
    assert not folder.exists()
    elsewhere.mkdir()
    (elsewhere / ".owner.lock").touch()  # its owner was killed: the lock is free
    starting = tmp_path / f"mde-x-{os.getpid()}-fedcba9876543210"  # made, not yet locked: a live pid's
    starting.mkdir()
    (starting / ".owner.lock").touch()
    with temp_scratch("mde-x-"):
        assert not elsewhere.exists() and starting.is_dir()


def test_scratch_folders_work_where_the_file_system_has_no_locks(tmp_path, monkeypatch):
    """NFS without lockd: flock raises ENOLCK. The scratch folder is made all the same, and judged by pid."""
    import errno
    import fcntl
    import tempfile

    from mde.io import remove_stale_scratch, temp_scratch

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with temp_scratch("mde-y-") as folder:
        assert folder.is_dir()
        remove_stale_scratch(tmp_path, "mde-y-")
        assert folder.is_dir()  # its pid is alive
    assert not folder.exists()


def test_long_file_names_and_rename_refusing_targets_are_written(tmp_path, monkeypatch):
    """A 250-byte name is legal: its temporary copy's name must be too. A bind-mounted file refuses a rename
    onto it (EBUSY): the content is copied over it instead."""
    from mde import io

    for long in (tmp_path / ("d" * 245 + ".json"), tmp_path / ("é" * 120 + ".json")):  # 250 and 245 bytes
        write_json_atomic(long, {"a": 1})
        assert json.loads(long.read_text()) == {"a": 1}
    mounted = tmp_path / "res.json"
    mounted.write_text("old")

    def busy(src, dst):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(io.os, "replace", busy)
    write_json_atomic(mounted, {"b": 2})
    assert json.loads(mounted.read_text()) == {"b": 2} and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_lock_file_removed_between_open_and_lock_is_not_the_lock(tmp_path, monkeypatch):
    """B opened the lock file, A finished and removed it, B locked the removed file: C then made a new one and
    locked that, and B and C wrote one output together."""
    import fcntl

    from mde.errors import InputError
    from mde.io import claim_output

    out = tmp_path / "out"
    holder = claim_output(out)
    holder.__enter__()  # A
    real = fcntl.flock
    calls = []

    def flock_after_the_holder_left(fh, op):
        if not calls:  # B, between opening the file and locking it: A ends meanwhile
            calls.append(op)
            holder.__exit__(None, None, None)
        return real(fh, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_left)
    with claim_output(out):  # B
        monkeypatch.setattr(fcntl, "flock", real)
        with pytest.raises(InputError, match="another mde command is writing this output now"), claim_output(out):
            pass  # C


def test_a_stop_while_a_scratch_folder_is_removed_waits_for_the_removal(tmp_path, monkeypatch):
    """Ctrl-C during the removal (an export's old models moved aside) left the hidden folder half-removed."""
    import shutil
    import signal

    from mde import io

    real = shutil.rmtree

    def interrupted_rmtree(path, **kwargs):
        signal.raise_signal(signal.SIGINT)
        real(path, **kwargs)

    monkeypatch.setattr(io.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt), io.scratch_folder(tmp_path, ".mde-x-") as folder:
        (folder / "old").mkdir()
    assert list(tmp_path.iterdir()) == []


def test_a_second_stop_while_a_scratch_folder_is_removed_stops_at_once(tmp_path, monkeypatch):
    """A removal on a slow disk must not swallow every Ctrl-C: the second one stops it (the next run of the
    command removes what is left, `remove_stale_scratch`)."""
    import shutil
    import signal

    from mde import io

    real = shutil.rmtree
    reached = []

    def twice_interrupted_rmtree(path, **kwargs):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        reached.append(path)
        real(path, **kwargs)

    monkeypatch.setattr(io.shutil, "rmtree", twice_interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt), io.scratch_folder(tmp_path, ".mde-x-"):
        pass
    assert reached == [] and len(list(tmp_path.iterdir())) == 1


def test_json_text_writes_the_bytes_of_a_name_that_is_not_utf8_as_text():
    from mde.io import json_text

    text = json_text({os.fsdecode(b"a\xff.png"): [os.fsdecode(b"\xfe"), "é", 1.5, float("nan")]})
    assert text == '{"a\\\\xff.png": ["\\\\xfe", "\\u00e9", 1.5, null]}'
    text.encode("utf-8")  # a lone surrogate raises here


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_take_the_umask(umask, mode, tmp_path):
    """A written file has the mode any program's new file has: 0666 less the umask (predict's depth maps and
    golden.npz were set to 0644 whatever it said, so a private umask left them readable by all)."""
    import numpy as np

    from mde.export.golden import GoldenInputs, write_golden
    from mde.runtime.predict import write_depth

    old = os.umask(umask)
    try:
        write_depth(np.full((4, 4), 2.0, np.float32), tmp_path / "d.png", "color", 10.0)
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        write_golden(tmp_path / "golden.npz", GoldenInputs(np.zeros((1, 3, 4, 4), np.float32), "noise"),
                     np.zeros((1, 1, 4, 4), np.float32), 10.0, "c", "w", {})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == dict.fromkeys(
        ("d.png", "r.json", "golden.npz"), mode)


def test_a_small_file_s_byte_order_mark_is_read_past(tmp_path):
    """meta.json saved by Windows Notepad was refused: "Unexpected UTF-8 BOM (decode using utf-8-sig)"."""
    from mde.data.readers import dataset_max_depth

    (tmp_path / "meta.json").write_bytes(b"\xef\xbb\xbf" + b'{"max_depth": 20}')
    assert dataset_max_depth(tmp_path) == 20


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("stream_first", [True, False])
def test_a_set_whose_stream_fails_renames_none_of_its_files(tmp_path, stream_first):
    """`mde parity --report new.md --json /dev/full`: exit 2, yet new.md was written, linking pictures never made.
    The stream is written before any file of the set is renamed, wherever it stands in the set."""
    from mde.errors import InputError
    from mde.io import atomic_paths

    (tmp_path / "old.md").write_text("the old report")
    names = ["/dev/full", tmp_path / "new.md", tmp_path / "old.md"]
    with pytest.raises(InputError, match="/dev/full: cannot write"):
        with atomic_paths(names if stream_first else names[::-1]) as temporary:
            for path in temporary:
                path.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.md"]
    assert (tmp_path / "old.md").read_text() == "the old report"


def test_a_failed_block_leaves_none_of_the_folders_it_made(tmp_path):
    """`--out n1/n2/n3` of a failed run left n1/n2: only the last folder was removed, not those `mkdir(parents=True)`
    made above it."""
    from mde.io import no_empty_new_folder

    with pytest.raises(RuntimeError), no_empty_new_folder(tmp_path / "n1" / "n2" / "n3"):
        (tmp_path / "n1" / "n2" / "n3").mkdir(parents=True)
        raise RuntimeError("stopped")
    assert not (tmp_path / "n1").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is left, as is one the block wrote into
    with no_empty_new_folder(tmp_path / "kept" / "a" / "b"):
        (tmp_path / "kept" / "a" / "b").mkdir(parents=True)
        (tmp_path / "kept" / "a" / "note.txt").write_text("written")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "kept").rglob("*")) == ["kept/a",
                                                                                                  "kept/a/note.txt"]
    with no_empty_new_folder(tmp_path / "never" / "made"):  # the block failed before making any
        pass
    assert not (tmp_path / "never").exists()
