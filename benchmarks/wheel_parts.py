"""Split wheels into parts small enough to send, then join, verify and install them on a machine with no index.

    python benchmarks/wheel_parts.py split WHEEL... --out DIR [--max-mib 60 | --part-bytes N] [--force]
    python benchmarks/wheel_parts.py join DIR [--wheel-dir DIR] [--install TARGET]

`split` writes the wheels one after another as one byte stream cut into `DIR/wheels.partNNN` files of at
most --max-mib each (so small wheels share a part instead of adding files to send), and
`DIR/manifest.json`: the SHA-256 and size of every part and of every wheel with its offset in the stream.
`join` checks every part against the manifest (a missing, short or corrupt part is named), cuts the
wheels back out, checks each one's SHA-256, and with `--install` runs
`python -m pip install --no-deps --no-index --upgrade --target TARGET WHEEL...` with this Python.
Bad input is one line on stderr and exit 2. Standard library only: it runs before mde is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO

MANIFEST = "manifest.json"
WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+!-]*\.whl")  # a wheel's file name: no folder, dot file or newline
PART = "wheels.part{:03d}"
FORMAT = "mde.wheel_parts/1"
CHUNK = 1 << 20
MAX_PARTS = 999


class PartsError(Exception):
    """Bad input: printed as one line, exit 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(f"{path}: {message}" if path is not None else message)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_wheel(path: Path) -> None:
    if not path.is_file():
        raise PartsError("wheel not found" if not path.exists() else "expected a wheel file", path)
    if path.suffix != ".whl":
        raise PartsError("expected a .whl file", path)
    if not WHEEL_NAME.fullmatch(path.name):  # join would refuse the manifest, on the other machine
        raise PartsError("not a wheel's file name (name-version-...-platform.whl: letters, digits, . _ + ! -)", path)
    if not zipfile.is_zipfile(path):
        raise PartsError("not a wheel (not a zip archive)", path)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PartsError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise PartsError("output folder is not empty (use --force to replace earlier parts)", out)
        for old in [out / MANIFEST, *out.glob("wheels.part[0-9][0-9][0-9]")]:
            old.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PartsError(f"cannot create output folder ({err.strerror or err})", out) from None


class _PartWriter:
    """Writes one byte stream as consecutive files of at most `part_bytes`, hashing each."""

    def __init__(self, out: Path, part_bytes: int):
        self.out, self.part_bytes, self.parts = out, part_bytes, []
        self._fh: BinaryIO | None = None
        self._digest, self._size = hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        while data:
            path = self.out / PART.format(len(self.parts))
            if self._fh is None:
                self._fh = open(path, "wb")  # noqa: SIM115 - closed in _close
            room = self.part_bytes - self._size
            chunk, data = data[:room], data[room:]
            try:
                self._fh.write(chunk)
            except OSError as err:  # a full disk: the file's write names no file
                raise OSError(err.errno, err.strerror, str(path)) from None
            self._digest.update(chunk)
            self._size += len(chunk)
            if self._size == self.part_bytes:
                self._close()

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()  # the buffer's last bytes are written here
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(self.out / PART.format(len(self.parts)))) from None
            self.parts.append({"file": PART.format(len(self.parts)), "size": self._size,
                               "sha256": self._digest.hexdigest()})
            self._fh, self._digest, self._size = None, hashlib.sha256(), 0

    def finish(self) -> list[dict]:
        self._close()
        return self.parts

    def discard(self) -> None:
        """Remove every part written so far (a failed or stopped split leaves no half set)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of what it buffered again
                self._fh.close()
            self._fh = None
        for i in range(len(self.parts) + 1):
            (self.out / PART.format(i)).unlink(missing_ok=True)


def split(wheels: list[Path], out: Path, part_bytes: int, force: bool = False) -> dict:
    """Write the wheels as one stream cut into parts of at most `part_bytes`, then `out/manifest.json`."""
    if part_bytes < 1:
        raise PartsError(f"--part-bytes (or --max-mib) must give parts of at least 1 byte, got {part_bytes}")
    for wheel in wheels:
        _check_wheel(wheel)
    names = [w.name for w in wheels]
    if len(set(names)) != len(names):
        raise PartsError(f"the same wheel name given twice: {', '.join(names)}")
    total = sum(w.stat().st_size for w in wheels)
    if -(-total // part_bytes) > MAX_PARTS:
        raise PartsError(f"more than {MAX_PARTS} parts of {part_bytes} bytes; use a larger part size")
    _prepare_out(out, force)
    writer, stream, entries, offset = _PartWriter(out, part_bytes), hashlib.sha256(), [], 0
    tmp = out / (MANIFEST + ".tmp")
    try:
        for wheel in wheels:
            digest, size = hashlib.sha256(), 0
            with open(wheel, "rb") as src:
                while block := src.read(CHUNK):
                    digest.update(block)
                    stream.update(block)
                    writer.write(block)
                    size += len(block)
            entries.append({"name": wheel.name, "offset": offset, "size": size, "sha256": digest.hexdigest()})
            offset += size
        manifest = {"format": FORMAT, "part_bytes": part_bytes, "size": offset, "sha256": stream.hexdigest(),
                    "parts": writer.finish(), "wheels": entries}
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out / MANIFEST)  # last: a manifest means a complete set of parts
    except BaseException:  # a full disk or a Ctrl-C: no half part is left to be sent
        writer.discard()
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def read_manifest(folder: Path) -> dict:
    """The manifest of a folder written by `split`, checked for shape."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise PartsError("parts folder not found" if not folder.exists() else "expected a folder", folder)
    if not path.is_file():
        raise PartsError("not found (not a folder written by `wheel_parts.py split`)", path)
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        offset, names = 0, set()
        if not manifest["wheels"]:
            raise ValueError("it lists no wheel")
        for wheel in manifest["wheels"]:
            if not (isinstance(wheel["name"], str) and WHEEL_NAME.fullmatch(wheel["name"])):
                raise ValueError(f"bad wheel name {wheel['name']!r}")
            if wheel["name"] in names:  # split refuses them: two would join into one file
                raise ValueError(f"wheel {wheel['name']} listed twice")
            names.add(wheel["name"])
            if not (_whole(wheel["offset"]) and _whole(wheel["size"])) or wheel["offset"] != offset or len(
                    wheel["sha256"]) != 64:
                raise ValueError(f"bad offset, size or sha256 for {wheel['name']}")
            offset += wheel["size"]
        if offset != manifest["size"] or sum(p["size"] for p in manifest["parts"]) != offset:
            raise ValueError("the sizes of the wheels and of the parts do not add up")
        for part in manifest["parts"]:
            if Path(part["file"]).name != part["file"] or not _whole(part["size"]) or len(part["sha256"]) != 64:
                raise ValueError(f"bad part entry {part!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PartsError(f"unreadable manifest ({type(err).__name__}: {err})", path) from None
    return manifest


def _whole(value: object) -> bool:
    """A JSON whole number >= 0 (a size or an offset; 933.0 would not index bytes)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_parts(folder: Path, parts: list[dict]) -> None:
    for i, part in enumerate(parts):
        path, where = folder / part["file"], f"part {i + 1} of {len(parts)}"
        if not path.is_file():
            raise PartsError(f"missing {where}", path)
        if path.stat().st_size != part["size"]:
            raise PartsError(f"{where} has {path.stat().st_size} bytes, expected {part['size']}", path)
        if _sha256(path) != part["sha256"]:
            raise PartsError(f"corrupt {where}: SHA-256 differs from the manifest", path)


def _stream(folder: Path, parts: list[dict]):
    for part in parts:
        with open(folder / part["file"], "rb") as fh:
            while block := fh.read(CHUNK):
                yield block


def join(folder: Path, wheel_dir: Path | None = None, install_target: Path | None = None) -> list[Path]:
    """Check every part, cut the wheels out into `wheel_dir` (default: `folder`), check each one's SHA-256.
    `install_target`, where the wheels will be installed, is checked with the rest before anything is written."""
    manifest = read_manifest(folder)
    wheel_dir = wheel_dir or folder
    if wheel_dir.exists() and not wheel_dir.is_dir():
        raise PartsError("exists and is not a folder", wheel_dir)
    for wheel in manifest["wheels"]:
        if (wheel_dir / wheel["name"]).is_dir():
            raise PartsError("a folder has the wheel's name; remove it", wheel_dir / wheel["name"])
    _check_parts(folder, manifest["parts"])  # before anything is written
    if install_target is not None:  # made now (pip would make it): one that cannot be is said before the join
        if install_target.exists() and not install_target.is_dir():
            raise PartsError("install target exists and is not a folder", install_target)
        try:
            install_target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PartsError(f"cannot create the install target ({err.strerror or err})", install_target) from None
    wheel_dir.mkdir(parents=True, exist_ok=True)
    stream, pending, joined = _stream(folder, manifest["parts"]), b"", []
    for wheel in manifest["wheels"]:
        target = wheel_dir / wheel["name"]
        tmp = target.with_name(target.name + ".tmp")
        digest, left = hashlib.sha256(), wheel["size"]
        try:
            with open(tmp, "wb") as dst:
                while left:
                    if not pending:
                        pending = next(stream, b"")
                        if not pending:
                            break
                    chunk, pending = pending[:left], pending[left:]
                    try:
                        dst.write(chunk)
                    except OSError as err:  # a full disk: the file's write names no file
                        raise OSError(err.errno, err.strerror, str(target)) from None
                    digest.update(chunk)
                    left -= len(chunk)
            if left or digest.hexdigest() != wheel["sha256"]:
                raise PartsError("joined wheel's SHA-256 or size differs from the manifest", target)
            os.replace(tmp, target)
        finally:  # a failed or stopped join leaves no half wheel
            tmp.unlink(missing_ok=True)
        joined.append(target)
    return joined


def install(wheels: list[Path], target: Path) -> None:
    """`pip install --no-deps --no-index --upgrade --target TARGET` the wheels with this Python."""
    if target.exists() and not target.is_dir():
        raise PartsError("install target exists and is not a folder", target)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--upgrade",
           "--disable-pip-version-check", "--target", str(target), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"]
        raise PartsError(f"pip install failed (exit {proc.returncode}): {errors[-1]}", target)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        raise PartsError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="wheel_parts.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sp = sub.add_parser("split", help="write WHEEL... as parts + manifest.json into --out")
    sp.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL")
    sp.add_argument("--out", type=Path, required=True, help="folder for the parts and manifest.json")
    sp.add_argument("--max-mib", type=float, default=None, help="largest part in MiB (default 60)")
    sp.add_argument("--part-bytes", type=int, default=None, help="largest part in bytes (instead of --max-mib)")
    sp.add_argument("--force", action="store_true", help="replace the parts in a non-empty --out")
    jp = sub.add_parser("join", help="verify the parts in DIR, reassemble the wheels, optionally install them")
    jp.add_argument("folder", type=Path, metavar="DIR")
    jp.add_argument("--wheel-dir", type=Path, default=None, help="where the joined wheels go (default: DIR)")
    jp.add_argument("--install", type=Path, default=None, metavar="TARGET",
                    help="pip install --no-deps --target TARGET the joined wheels")
    try:
        args = parser.parse_args(argv)
        if args.command == "split":
            if args.max_mib is not None and args.part_bytes is not None:
                raise PartsError("--max-mib and --part-bytes conflict: give one")
            if args.max_mib is not None and not 0 < args.max_mib <= 2**20:  # NaN and inf fail too
                raise PartsError(f"--max-mib must be > 0 and at most 1 TiB (2**20 MiB), got {args.max_mib:g}")
            size = args.part_bytes if args.part_bytes is not None else int((args.max_mib or 60) * 2**20)
            manifest = split(args.wheels, args.out, size, args.force)
            for wheel in manifest["wheels"]:
                print(f"{wheel['name']}: {wheel['size']} bytes (sha256 {wheel['sha256'][:16]}...)")
            print(f"{len(manifest['parts'])} part(s) of at most {size} bytes in {args.out}; send each part and "
                  f"{MANIFEST}, then: python benchmarks/wheel_parts.py join DIR --install TARGET")
        else:
            wheels = join(args.folder, args.wheel_dir, args.install)
            for wheel in wheels:
                print(f"joined {wheel} (sha256 verified)")
            if args.install is not None:
                install(wheels, args.install)
                print(f"installed {len(wheels)} wheel(s) into {args.install}")
    except PartsError as err:
        print(f"wheel_parts: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"wheel_parts: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wheel_parts: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
