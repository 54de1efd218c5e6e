"""Atomic file writes and small JSON helpers shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mde.errors import InputError, shown_path, valid_unicode

# Why a write fails that is the place's fault, not mde's: the CLI says so in one line (exit 2).
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}
# A rename onto the output refused by where it is (a file bind-mounted into a container, another file system):
# the new content is copied over it instead.
RENAME_REFUSED = {errno.EBUSY, errno.EXDEV}
TMP_NAME_BYTES = 200  # of the output's name in its temporary copy's: `.NAME.XXXXXXXX.tmp` within 255 bytes


def _stream_name(path: Path) -> bool:
    """Whether `path` names one of this process's own streams (/dev/stdout, /dev/stderr, /dev/fd/N,
    /proc/self/fd/N), however it is spelled (`//dev/stdout`, through a link to /dev): its folder is resolved."""
    folder = os.path.realpath(path.absolute().parent)
    return (folder == "/dev" and path.name in ("stdout", "stderr")) or (
        re.fullmatch(r"/proc/\d+/fd", folder) is not None and path.name.isdigit())


def written_in_place(path: str | Path) -> bool:
    """Whether `path` is a stream to write into rather than a file to replace: one of the process's own streams
    (a terminal, a pipe, a process substitution, the file a shell redirected it to), or a FIFO or character
    device named directly. Any other symbolic link is replaced. A block device, a closed stream, and a new
    file in /dev or /proc are refused."""
    path = Path(path)
    if _stream_name(path):
        try:
            mode = path.stat().st_mode
        except OSError:  # `>&-`: replacing the name would replace the system's /dev/stdout link
            raise InputError("names a closed stream; nothing takes this output", path) from None
    elif path.is_symlink():
        return False
    else:
        try:
            mode = path.lstat().st_mode
        except OSError:
            mode = None
        if mode is None or stat.S_ISREG(mode):
            folder = os.path.realpath(path.absolute().parent)
            if folder in ("/dev", "/proc") or folder.startswith("/proc/"):  # (/dev/shm is a file system)
                raise InputError("mde makes no files in /dev or /proc; expected a file elsewhere or a stream", path)
            return False
    if stat.S_ISBLK(mode):
        raise InputError("is a block device (a disk); expected a file to write", path)
    return True


def user_cache_dir() -> Path:
    """mde's cache folder, `~/.cache/mde` (TensorRT timing caches, ONNX Runtime's TensorRT engines), asked for
    only where one is used. A process with no home (HOME unset or empty, with a user id that has no passwd
    entry: `env -i`, some containers) keeps its caches in a private folder of the system's temporary one."""
    home = os.environ.get("HOME")
    if home == "":  # Path.home() would read it as the file system's root
        return private_temp_folder("cache", "caches")
    try:
        return Path.home() / ".cache" / "mde"
    except (RuntimeError, KeyError):  # "Could not determine home directory."
        return private_temp_folder("cache", "caches")


def private_temp_folder(name: str, what: str) -> Path:
    """`TMP/mde-NAME-UID`, made if missing and checked to be this user's alone (not a link, not another user's,
    not writable by others: what is kept there, output locks or loadable engines, is trusted). `what` names it
    in the refusal, an `InputError`."""
    folder = Path(tempfile.gettempdir()) / f"mde-{name}-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        found = folder.lstat()
    except OSError as err:  # a file of that name, a full or read-only temporary folder
        raise InputError(f"cannot keep mde's {what} here ({err.strerror or err}); set TMPDIR to another "
                         "folder", folder) from None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o022:
        raise InputError(f"the folder of mde's {what} is not a private folder of yours (a link, another user's, "
                         "or writable by others); remove it, or set TMPDIR to another folder", folder)
    return folder


def is_stdout(path: str | Path) -> bool:
    """Whether `path` is where this process's stdout goes (/dev/stdout, /dev/fd/1, the file or terminal it was
    redirected to): a command that writes a file there prints nothing else on stdout."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError):  # not there yet, or no real stdout (closed, captured)
        return False


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A symbolic link at `path` is replaced by the new file and what it pointed to is left alone (as
    `sed -i` and git do): a link planted in a shared folder cannot turn a write into one elsewhere. A
    stream (/dev/stdout, a FIFO, `>(jq .)`) gets the content appended once the block succeeds: a
    redirected file keeps what was written to it before.

    A crash or SIGKILL at any moment leaves either the old complete file or the new
    complete file, never a half-written one (the rename is atomic on POSIX).
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # a link to a folder is replaced, as any other link
        raise InputError("is a folder; expected a file to write", path)
    if written_in_place(path):  # written whole at the end, appended: what the shell's file held stays
        with tempfile.TemporaryDirectory(prefix="mde-stream-") as folder:
            tmp_path = Path(folder) / path.name
            yield tmp_path
            try:
                with open(tmp_path, "rb") as src, open(path, "ab") as out:
                    shutil.copyfileobj(src, out)
            except OSError as err:
                raise InputError(f"cannot write ({err.strerror or err})", path) from None
        return
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        short = os.fsencode(path.name)[:TMP_NAME_BYTES].decode(errors="ignore")  # bytes: é is two of them
        fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise InputError(f"cannot write here ({err.strerror or err})", parent) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, path)
        except OSError as err:
            if err.errno not in RENAME_REFUSED:
                raise
            # in place: not atomic, but the only write such a path takes; a full disk is found before it starts
            if shutil.disk_usage(path.parent).free < tmp_path.stat().st_size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            shutil.copyfile(tmp_path, path)
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise
        raise InputError(f"cannot write ({err.strerror})", path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def claim_output(path: str | Path) -> Iterator[None]:
    """Hold `path` (an output file or folder) for the block: another mde command claiming it meanwhile is
    refused, where two writers would mix their files. An advisory lock, in a per-user folder of the
    temporary directory (nothing is left beside the output); where there is no `fcntl`, no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    key = hashlib.sha1(os.fsencode(resolved(path))).hexdigest()[:20]
    lock = private_temp_folder("locks", "output locks") / f"{key}.lock"
    for _ in range(LOCK_TRIES):
        try:  # never through a link, never truncating: the file only carries the lock
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise InputError(f"cannot open the output lock ({err.strerror or err})", lock) from None
        fh = os.fdopen(fd, "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fh.fileno(), lock):
                break
        except BlockingIOError:
            fh.close()
            raise InputError("another mde command is writing this output now; let it finish, or choose "
                             "another", path) from None
        except BaseException:
            fh.close()
            raise
        fh.close()  # its holder removed this file as it finished, after we opened it: lock the one there now
    else:
        raise InputError("cannot take the output lock: its file keeps changing (a file system without stable "
                         "inodes?); set TMPDIR to a local folder", lock)
    with fh:
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still held; the lock goes with the file


LOCK_TRIES = 20  # lock files removed just as they were opened, this many times running: an odd file system


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one at `path` now (not one removed since it was opened)."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def open_regular(path: str | Path) -> Any:
    """`open(path, "rb")` for a regular file; OSError for anything else (a FIFO would block, /dev/zero never
    end), found without blocking."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to block on
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, "a folder, not a file", str(path))
        raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device?)", str(path))
    if nonblocking:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def starts_with(path: str | Path, magic: bytes) -> bool:
    """Whether the regular file begins with `magic` (a format's signature: numpy takes any non-.npy file for a
    pickle); OSError for what is no regular file."""
    with open_regular(path) as fh:
        return fh.read(len(magic)) == magic


SMALL_FILE_BYTES = 16 * 2**20  # a sidecar, meta.json, tolerance table or ranges file is far smaller


def read_small_text(path: str | Path, limit: int = SMALL_FILE_BYTES) -> str:
    """The UTF-8 text of one of mde's small JSON or TOML files, without the byte-order mark an editor may put
    first (Notepad's; JSON parsers may ignore it, and Python's refuses it). OSError for what is no regular file (a
    FIFO would block, /dev/zero never end) or is over `limit` bytes; ValueError (UnicodeDecodeError) for no text."""
    with open_regular(path) as fh:
        info = os.fstat(fh.fileno())
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size / 2**20:.0f} MiB, more than such a file holds", str(path))
        return fh.read(limit + 1).decode("utf-8-sig")


def parse_json(text: str) -> Any:
    """`json.loads`, with nesting too deep for the parser, and a key given twice in one object (where `json` keeps
    the last in silence: `{"max_depth": 20, "max_depth": 80}`), a ValueError like any other malformed JSON."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"the key {json.dumps(key)} is given twice in one object")
        doc[key] = value
    return doc


def json_float(value: Any) -> float | None:
    """A number read from JSON or TOML as a float; None for a bool, a string or any other non-number, and for an
    integer past float's range (their integers have no bound: 1 followed by 400 zeros)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def is_utf8(path: str | Path) -> bool:
    """Whether `path` is UTF-8 text: ONNX Runtime and the onnx tools take no other path (a name's bytes that are
    not UTF-8 reach Python as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolved(path: str | Path) -> Path:
    """`Path.resolve()`, with a symbolic-link loop an `InputError` naming the path (Python raises RuntimeError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:
        raise InputError(f"cannot follow this path (a symbolic-link loop? {getattr(err, 'strerror', None) or err})",
                         path) from None


def file_identity(path: str | Path) -> tuple[int, int]:
    """(device, inode) of an existing file: one file however it is reached (symbolic or hard links, `..`)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


@contextlib.contextmanager
def atomic_paths(paths: Iterable[str | Path]) -> Iterator[list[Path]]:
    """`atomic_path` for a set of files: temporary paths beside each, renamed onto them only when the whole
    block succeeds. A write that fails (a full disk) leaves every earlier file of the set as it was.

    The streams among them (`--json /dev/stdout`, /dev/full) are written first at the end: appended, they cannot
    be taken back, and one that fails (a full device) must leave no file of the set renamed (the stack finishes
    the last entered first)."""
    paths = [Path(path) for path in paths]
    temporary: list[Path] = [Path()] * len(paths)
    with contextlib.ExitStack() as stack:
        for index in sorted(range(len(paths)), key=lambda i: written_in_place(paths[i])):  # files, then streams
            temporary[index] = stack.enter_context(atomic_path(paths[index]))
        yield temporary


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None (null), as strict JSON parsers refuse bare NaN, and the bytes of a
    file name that is not UTF-8 as `\\xNN` text (a lone surrogate, `\\udcff`, is refused by strict parsers too)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return valid_unicode(obj)
    if isinstance(obj, dict):
        return {json_safe(key): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def json_text(obj: Any, **options: Any) -> str:
    """`obj` as strict JSON, NaN and infinities as null: what every `--json` and JSON file of mde holds."""
    return json.dumps(json_safe(obj), allow_nan=False, **options)


def json_document(obj: Any) -> bytes:
    """`obj` as a JSON file of mde holds it: indented, sorted, strict (NaN as null)."""
    return (json_text(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, strict JSON (NaN as null) to `path` atomically."""
    write_bytes_atomic(path, json_document(obj))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def as_path(path: Any, what: str = "file") -> Path:
    """`path` as a Path; `InputError` for what is no path (None from a failed camera read, an array, bytes)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"expected a path to the {what}, got {type(path).__name__}")
    if os.fspath(path) in ("", b""):  # Path("") is ".": an unset variable would name the current folder
        raise InputError(f"expected a path to the {what}, got an empty string")
    return Path(path)


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path if it is an existing regular file, else raise `InputError`."""
    path = as_path(path, what)
    if not path.exists():
        raise InputError(f"{what} not found", path)
    article = "an" if what[:1].lower() in "aeiou" else "a"
    if path.is_dir():
        raise InputError(f"expected {article} {what}, found a directory", path)
    if not path.is_file():  # read twice (a format check, then the load), and its size says nothing
        raise InputError(f"expected {article} {what}, found a pipe, socket or device; give the file itself", path)
    if path.stat().st_size == 0:
        raise InputError(f"{what} is empty (0 bytes)", path)
    return path


@contextlib.contextmanager
def scratch_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A new folder `parent/PREFIX<pid>-<random>`, removed with its contents when the block ends, however it ends.

    It is named before it is made, so a stop that lands between making it and entering the block
    (SIGTERM raises where Python next runs) still removes it; `tempfile.mkdtemp` leaves that gap.
    """
    path = Path(parent) / f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"
    try:
        path.mkdir()
        yield path
    finally:
        with deferred_signals(second_stops=True):  # a stop during the removal (old outputs moved aside) left half
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def temp_scratch(prefix: str) -> Iterator[Path]:
    """A `scratch_folder` in the system's temporary folder that, for the block, also holds what libraries make
    through `tempfile` (ONNX Runtime's quantization makes its own folders there, and a Ctrl-C between its making
    one and entering its `with` left that behind): all of it goes when the block ends. The folders a SIGKILL left
    of earlier runs go first. `tempfile`'s default folder is the whole process's, so what other threads make
    through it meanwhile lands here too and is removed with it: for a command, which works on one thread."""
    parent = tempfile.gettempdir()
    remove_stale_scratch(parent, prefix)
    with scratch_folder(parent, prefix) as folder, _held_owner_lock(folder):
        saved, tempfile.tempdir = tempfile.tempdir, str(folder)
        try:
            yield folder
        finally:
            tempfile.tempdir = saved


OWNER_LOCK = ".owner.lock"  # in a shared temporary folder, what tells a live scratch folder from a dead one's


@contextlib.contextmanager
def _held_owner_lock(folder: Path) -> Iterator[None]:
    """An advisory lock on `folder/OWNER_LOCK`, held for the block: a process id does not say whether its
    owner lives where processes of another PID namespace (containers sharing /tmp) make such folders too."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the process id alone
        yield
        return
    fd = os.open(folder / OWNER_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with contextlib.suppress(OSError):  # a file system without locks (NFS without lockd): the pid alone
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _owner_gone(path: Path, pid: int) -> bool:
    """Whether the process that made scratch folder `path` has ended: its process id is no process's here, and
    its owner lock, where it has one, is held by none (an owner in another PID namespace holds it; one that
    has just made the folder and not yet locked it is still a live process of its id)."""
    if _alive(pid):
        return False
    try:
        import fcntl

        fd = os.open(path / OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (ImportError, OSError):  # none: an export's staging folder, or an older mde's
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:  # held: its owner runs, in another PID namespace
        return False
    except OSError:  # a file system without locks: the process id alone
        return True
    finally:
        os.close(fd)


def remove_stale_scratch(parent: str | Path, prefix: str) -> None:
    """Remove `scratch_folder`s in `parent` whose process is gone (killed with SIGKILL, it removed nothing):
    folders named exactly as `scratch_folder` names them whose owner has ended (`_owner_gone`)."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d{{1,7}})-[0-9a-f]{{16}}")  # pids stay below 2**22
    for path in Path(parent).glob(f"{prefix}*"):
        found = pattern.fullmatch(path.name)
        if found and path.is_dir() and not path.is_symlink() and _owner_gone(path, int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


@contextlib.contextmanager
def deferred_signals(second_stops: bool = False) -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait, and come back when it ends (SIGTERM first, where both came).
    For a handful of renames that must all happen, or none; with `second_stops`, for work that may take long
    (a removal on a slow disk, a write into a pipe nobody reads), a second signal stops it at once. Only from
    the main thread, and only for a signal whose handler is Python's (one installed from C is left alone)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    # None: a handler installed from C, left alone; SIG_IGN: nothing to hold (and putting it back afterwards
    # would undo a default action restored meanwhile at the C level, as mde.cli does after a SIGTERM)
    previous = {sig: handler for sig, handler in previous.items() if handler not in (None, signal.SIG_IGN)}
    caught: list[int] = []

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        if second_stops and len(caught) > 1:
            restore()
            caught.clear()  # this one is the stop: nothing to raise again when the block ends
            signal.raise_signal(signum)  # its own handler now, when this one returns

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        restore()
        for sig in previous:  # SIGTERM before SIGINT: stopped from outside says more than Ctrl-C
            if sig in caught:
                signal.raise_signal(sig)
                break


def replace_together(moves: list[tuple[Path | None, Path]], aside: Path) -> None:
    """Move each source onto its target (a file or a folder), all or none; a None source removes the target.

    The targets' old entries are first moved into the folder `aside` (on the same file system; the caller
    removes it and them), the last target first, and come back if a move fails. So a target listed last
    (a dataset's meta.json) is the first to go and the last to come. Where one cannot come back, `aside`
    is kept beside its folder and the error names it.
    """
    aside.mkdir(exist_ok=True)
    moved_aside: list[tuple[Path, Path]] = []
    moved_in: list[tuple[Path, Path]] = []
    with deferred_signals():
        try:
            for i, (_, target) in reversed(list(enumerate(moves))):
                if target.exists() or target.is_symlink():
                    old = aside / f"{i}-{target.name}"
                    os.replace(target, old)
                    moved_aside.append((old, target))
            for source, target in moves:
                if source is not None:
                    os.replace(source, target)
                    moved_in.append((source, target))
        except BaseException:
            stuck = False
            for back, place in [*((s, t) for s, t in reversed(moved_in)), *((t, o) for o, t in reversed(moved_aside))]:
                try:
                    os.replace(place, back)
                except OSError:
                    stuck = True
            if stuck:  # out of the folder its caller deletes, and said where
                kept = aside.parent.parent / f".mde-kept-{secrets.token_hex(4)}"
                os.replace(aside, kept)
                raise InputError(f"a swap failed half-way and the old files could not all be put back; they are "
                                 f"in {kept}", aside.parent.parent) from None
            raise


@contextlib.contextmanager
def no_empty_new_folder(path: str | Path) -> Iterator[None]:
    """When the block ends, remove `path` if the block created it and left it empty (it failed or wrote nothing),
    and each folder above it that did not exist either (`mkdir(parents=True)` made them) and is left empty."""
    path = Path(path)
    missing = []  # path, then each missing folder above it: deepest first
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    try:
        yield
    finally:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:  # not empty (the usual case): nothing above it is empty either
                if folder.exists():
                    break  # never made, or already gone: the one above may still be the block's, and empty


# Files a report or a JSON result must never replace, even when the run does not read them.
PRECIOUS_SUFFIXES = (".onnx", ".engine", ".plan", ".pt", ".pth", ".npz", ".npy", ".ranges.json")
# A training run folder's own files (`mde train` writes them; `--resume` reads config.json and metrics.jsonl).
RUN_FILES = ("best.pt", "last.pt", "config.json", "metrics.jsonl", "curves.png", "samples.png")


def check_output_file(path: str | Path, option: str, inputs: Iterable[str | Path]) -> Path:
    """Refuse an output file that is a folder, lies under a file, is a model or data file, or is one of
    `inputs` or lies inside one of them. Checked before any work, so a long run does not fail at its end.

    A run must not overwrite what it reads (`--json model.onnx`, a report inside the dataset), nor
    another model it did not read (`--report export/model.int8.onnx`).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} needs a file name; this is a folder", path)
    check_not_under_file(path, option)
    if not written_in_place(path):  # a closed stream, a block device, a new file in /dev: refused now, not at the end
        check_can_write_beside(path)
    target = resolved(path)
    for source in map(Path, inputs):
        if target == resolved(source):
            raise InputError(f"{option} would write over the input {source}; choose another file", path)
        if resolved(source) in target.parents:
            raise InputError(f"{option} would write inside the input folder {source}; choose another file", path)
    if path.name.lower().endswith(PRECIOUS_SUFFIXES):  # a new one too: the same run again would refuse it
        if path.is_file():
            raise InputError(f"{option} would replace a model or data file; choose another file", path)
        raise InputError(f"{option} is named as a model or data file ({', '.join(PRECIOUS_SUFFIXES)}), which no "
                         "run replaces once written; choose another name", path)
    return path


def refuse_broken_link(path: str | Path) -> None:
    """Refuse an output that is a symbolic link to nothing (or a loop): making it would fail as "File exists"."""
    if Path(path).is_symlink() and not Path(path).exists():
        raise InputError("is a broken symbolic link (or a loop of links); remove it or point it at a folder", path)


def check_outside_splits(out: str | Path, data: str | Path, option: str = "--out") -> None:
    """Refuse an output folder inside `data`'s train/ or val/: its files would become the dataset's images."""
    target = resolved(out)
    for split in ("train", "val"):
        if (Path(data) / split).is_dir() and target.is_relative_to(resolved(Path(data) / split)):
            raise InputError(f"{option} lies inside the dataset's train/ or val/ ({data}): its files would become "
                             "part of the dataset; choose a folder outside them", out)


def check_can_write_beside(path: str | Path) -> None:
    """Refuse an output file whose folder (or the nearest one above that exists) takes no new file: a read-only
    file system, /sys, no permission. Found by making and removing a file there, before the work, not after it."""
    above = next(p for p in (Path(path).absolute().parent, *Path(path).absolute().parents) if p.exists())
    try:
        fd, probe = tempfile.mkstemp(prefix=".mde-probe.", dir=above)
    except OSError as err:
        raise InputError(f"cannot write here ({err.strerror or err})", above) from None
    os.close(fd)
    with contextlib.suppress(OSError):  # made but not removable (an append-only folder): harmless, and rare
        os.unlink(probe)


def check_not_under_file(path: str | Path, what: str) -> None:
    """Refuse an output `path` below a regular file (`export/golden.npz/x.json`): found now, not at the last write."""
    above = next((p for p in Path(path).parents if p.exists() or p.is_symlink()), None)  # as given (relative
    if above is not None and not above.exists():  # stays relative); "." is a relative path's last parent
        raise InputError(f"{what} would write under {shown_path(above)}, a link to nothing", path)
    if above is not None and not above.is_dir():
        raise InputError(f"{what} would write under {shown_path(above)}, which is a file", path)


def prepare_output_dir(path: str | Path, force: bool = False) -> Path:
    """Create `path` for writing; refuse a folder with files in it unless `force` (hidden ones, a file manager's
    `.DS_Store`, do not count: no command reads or replaces them)."""
    path = Path(path)
    refuse_broken_link(path)
    if path.exists() and not path.is_dir():
        raise InputError("output exists and is not a directory", path)
    if path.is_dir() and any(not entry.name.startswith(".") for entry in path.iterdir()) and not force:
        raise InputError("output folder is not empty (use --force to overwrite)", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder ({err.strerror or err})", path) from None
    if not os.access(path, os.W_OK):
        raise InputError("output folder is not writable", path)
    return path
