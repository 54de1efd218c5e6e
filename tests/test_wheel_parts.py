"""benchmarks/wheel_parts.py: a real wheel (this project's) split into parts, joined byte-identical, installed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "wheel_parts.py"
PART_BYTES = 40_000


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This project's wheel, built offline from a copy of the source (no build/ left in the tree)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    with open(ROOT / "pyproject.toml", "rb") as fh:  # every stage folder the package maps, so none is missed
        folders = set(tomllib.load(fh)["tool"]["setuptools"]["package-dir"].values())
    for pkg in sorted(folders):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, check=False, timeout=300)
    wheels = list(out.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot build this project's wheel here: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return wheels[0]


@pytest.fixture
def parts(tmp_path, wheel) -> Path:
    out = tmp_path / "parts"
    proc = run("split", wheel, "--out", out, "--part-bytes", PART_BYTES)
    assert proc.returncode == 0, proc.stderr
    return out


def test_split_writes_parts_and_manifest(parts, wheel):
    manifest = json.loads((parts / "manifest.json").read_text())
    [entry] = manifest["wheels"]
    size = wheel.stat().st_size
    assert entry["name"] == wheel.name and entry["size"] == size and entry["offset"] == 0
    assert entry["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    files = sorted(parts.glob("*.part*"))
    assert len(files) == len(manifest["parts"]) == -(-size // PART_BYTES) >= 3
    assert all(f.stat().st_size <= PART_BYTES for f in files)
    assert b"".join(f.read_bytes() for f in files) == wheel.read_bytes()


def test_join_is_byte_identical_and_installs(parts, wheel, tmp_path):
    target = tmp_path / "site"
    proc = run("join", parts, "--wheel-dir", tmp_path / "joined", "--install", target)
    assert proc.returncode == 0, proc.stderr
    joined = tmp_path / "joined" / wheel.name
    assert joined.read_bytes() == wheel.read_bytes()
    assert zipfile.ZipFile(joined).testzip() is None
    assert (target / "mde" / "runtime" / "estimator.py").is_file()
    assert list(target.glob("mde-*.dist-info"))
    # the installed copy imports from the target folder alone
    check = subprocess.run([sys.executable, "-c", "import mde.runtime, sys; print(mde.runtime.__file__)"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(target)}, cwd=tmp_path,
                           check=False)
    assert check.returncode == 0 and check.stdout.strip().startswith(str(target)), check.stderr


def test_several_wheels_share_parts_and_come_back_intact(tmp_path, wheel):
    second = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(second, "w") as zf:
        zf.writestr("other/__init__.py", "x = 1\n" * 5000)
    part = (wheel.stat().st_size + second.stat().st_size) // 3 + 1  # a part straddles the two wheels
    assert run("split", wheel, second, "--out", tmp_path / "p", "--part-bytes", part).returncode == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert len(manifest["parts"]) == 3 and manifest["wheels"][1]["offset"] == wheel.stat().st_size
    proc = run("join", tmp_path / "p", "--wheel-dir", tmp_path / "j")
    assert proc.returncode == 0, proc.stderr
    for original in (wheel, second):
        assert (tmp_path / "j" / original.name).read_bytes() == original.read_bytes()


def test_max_mib_splits_a_wheel_larger_than_a_part(tmp_path, wheel):
    size = wheel.stat().st_size
    max_mib = size / 2.5 / 2**20  # three parts
    proc = run("split", wheel, "--out", tmp_path / "p", "--max-mib", max_mib)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "p").glob("*.part*"))) == 3


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_part_is_named(parts, tmp_path):
    victim = sorted(parts.glob("*.part*"))[1]
    victim.unlink()
    proc = run("join", parts, "--install", tmp_path / "site")
    _one_line_error(proc, victim.name, "missing part 2 of")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_part_is_named(parts, tmp_path, damage):
    victim = sorted(parts.glob("*.part*"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-1]
    victim.write_bytes(bytes(data))
    proc = run("join", parts, "--install", tmp_path / "site")
    _one_line_error(proc, victim.name, "corrupt part 1 of" if damage == "flip" else "bytes, expected")
    assert not (tmp_path / "site").exists()


def test_a_wheel_pip_refuses_is_one_line(tmp_path):
    bad = tmp_path / "broken-0.1-py3-none-any.whl"  # a zip with no metadata: pip cannot install it
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("broken/__init__.py", "")
    assert run("split", bad, "--out", tmp_path / "p").returncode == 0
    _one_line_error(run("join", tmp_path / "p", "--install", tmp_path / "site"), "pip install failed")


@pytest.mark.parametrize("args, needle", [
    (["split", "{tmp}/nope.whl", "--out", "{tmp}/o"], "wheel not found"),
    (["split", "{tmp}/file.txt", "--out", "{tmp}/o"], "expected a .whl file"),
    (["split", "{tmp}/fake.whl", "--out", "{tmp}/o"], "not a zip archive"),
    # join, on the other machine, would refuse the manifest: found before the parts are carried
    (["split", "{tmp}/renamed (1).whl", "--out", "{tmp}/o"], "not a wheel's file name"),
    (["split", "{wheel}", "--out", "{tmp}/file.txt"], "not a folder"),
    (["split", "{wheel}", "--out", "{tmp}/full"], "not empty"),
    (["split", "{wheel}", "--out", "{tmp}/o", "--max-mib", "0"], "--max-mib must be > 0"),
    (["split", "{wheel}", "--out", "{tmp}/o", "--max-mib", "inf"], "--max-mib must be > 0 and at most 1 TiB"),
    (["split", "{wheel}", "--out", "{tmp}/o", "--part-bytes", "0"], "must give parts of at least 1 byte"),
    (["split", "{wheel}", "--out", "{tmp}/o", "--part-bytes", "10"], "more than 999 parts"),
    (["split", "{wheel}", "--out", "{tmp}/o", "--max-mib", "1", "--part-bytes", "9"], "conflict"),
    (["join", "{tmp}/nowhere"], "parts folder not found"),
    (["join", "{tmp}/full"], "manifest.json: not found"),
    (["join", "{tmp}/badmanifest"], "unreadable manifest"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, wheel, args, needle):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "fake.whl").write_text("not a zip")
    shutil.copy(wheel, tmp_path / "renamed (1).whl")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other").write_text("x")
    (tmp_path / "badmanifest").mkdir()
    (tmp_path / "badmanifest" / "manifest.json").write_text('{"format": "something else"}')
    proc = run(*(a.format(tmp=tmp_path, wheel=wheel) for a in args))
    _one_line_error(proc, needle)


def test_force_replaces_earlier_parts(tmp_path, wheel, parts):
    assert run("split", wheel, "--out", parts, "--part-bytes", PART_BYTES * 2, "--force").returncode == 0
    files = list(parts.glob("*.part*"))
    assert len(files) == -(-wheel.stat().st_size // (PART_BYTES * 2))
    assert run("join", parts, "--wheel-dir", tmp_path / "j").returncode == 0
    assert (tmp_path / "j" / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_stopped_join_leaves_no_half_wheel(parts, tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import wheel_parts

    real = wheel_parts._stream

    def stopped_after_one(folder, names):
        stream = real(folder, names)
        yield next(stream)
        raise KeyboardInterrupt

    monkeypatch.setattr(wheel_parts, "_stream", stopped_after_one)
    out = tmp_path / "joined"
    with pytest.raises(KeyboardInterrupt):
        wheel_parts.join(parts, out)
    assert list(out.iterdir()) == []


def test_a_folder_at_the_wheels_name_is_named(parts, tmp_path):
    manifest = json.loads((parts / "manifest.json").read_text())
    out = tmp_path / "joined"
    (out / manifest["wheels"][0]["name"]).mkdir(parents=True)
    proc = run("join", parts, "--wheel-dir", out)
    _one_line_error(proc, manifest["wheels"][0]["name"], "a folder has the wheel's name")


def _edited(parts: Path, tmp_path: Path, edit) -> Path:
    """A copy of `parts` whose manifest `edit` changed."""
    copy = tmp_path / "edited"
    shutil.copytree(parts, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("edit, needle", [
    # a size of 933.0 passed the checks and failed as a slice index: a traceback
    (lambda m: m["wheels"][0].update(size=float(m["wheels"][0]["size"])), "bad offset, size or sha256"),
    (lambda m: m["parts"][0].update(size=float(m["parts"][0]["size"])), "bad part entry"),
    # one wheel listed twice joined into one file, the other lost
    (lambda m: m["wheels"].append(dict(m["wheels"][0])), "listed twice"),
    (lambda m: m["wheels"][0].update(name=".whl"), "bad wheel name '.whl'"),
    (lambda m: m["wheels"][0].update(name="a\nb.whl"), "bad wheel name"),
    (lambda m: m.update(wheels=[], parts=[], size=0), "it lists no wheel"),
])
def test_a_damaged_manifest_is_one_line_and_joins_nothing(parts, tmp_path, edit, needle):
    damaged = _edited(parts, tmp_path, edit)
    out = tmp_path / "joined"
    proc = run("join", damaged, "--wheel-dir", out)
    _one_line_error(proc, "manifest.json", needle)
    assert not out.exists()


def test_an_install_target_that_is_a_file_is_refused_before_joining(parts, tmp_path):
    (tmp_path / "site").write_text("a file")
    out = tmp_path / "joined"
    proc = run("join", parts, "--wheel-dir", out, "--install", tmp_path / "site")
    _one_line_error(proc, "site", "install target exists and is not a folder")
    assert not out.exists()


def test_an_install_target_that_cannot_be_made_is_named_before_joining(parts, tmp_path):
    """`--install afile/x` joined the wheels, then said "pip install failed (exit 2): ERROR: Exception:"."""
    (tmp_path / "afile").write_text("a file")
    out = tmp_path / "joined"
    proc = run("join", parts, "--wheel-dir", out, "--install", tmp_path / "afile" / "x")
    _one_line_error(proc, "afile/x", "cannot create the install target (Not a directory)")
    assert not out.exists()


def test_a_split_onto_a_full_disk_names_the_part_and_leaves_none(tmp_path, wheel, monkeypatch, capsys):
    """A full disk: "wheel_parts: error: : No space left on device", and a half part left to be sent."""
    import errno

    sys.path.insert(0, str(SCRIPT.parent))
    import wheel_parts

    class FullDisk:  # the second part's file takes no byte
        def __init__(self, path):
            self.path, self.name = path, Path(path).name
            Path(path).touch()  # made, as open(path, "wb") makes it

        def write(self, data):
            if self.name != "wheels.part000":
                raise OSError(errno.ENOSPC, "No space left on device")
            with open(self.path, "ab") as fh:
                fh.write(data)

        def close(self):  # a real file's close flushes its buffer: on a full disk, it fails again
            if self.name != "wheels.part000":
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wheel_parts, "open", lambda path, mode="r": FullDisk(path) if mode == "wb" else open(path, mode),
                        raising=False)
    out = tmp_path / "p"
    part = str(wheel.stat().st_size // 3 + 1)  # three parts
    assert wheel_parts.main(["split", str(wheel), "--out", str(out), "--part-bytes", part]) == 2
    assert capsys.readouterr().err == f"wheel_parts: error: {out / 'wheels.part001'}: No space left on device\n"
    assert list(out.iterdir()) == []
