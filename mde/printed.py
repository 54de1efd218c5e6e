"""What a library prints on stdout, caught for the calling thread only (`contextlib.redirect_stdout` swaps it for all).

ONNX Runtime prints its provider fallbacks, its quantizer its progress and torch.hub its downloads
with Python's `print`, onto `sys.stdout`, where `--json` output goes. `redirect_stdout` would catch
them by replacing `sys.stdout` for the whole process: another thread's lines (a robot's telemetry,
a second camera's model opening) went into the buffer too, and two overlapping redirections
restored each other's buffer, leaving stdout lost for good. Here `sys.stdout` is replaced once,
while any thread catches, by a stream that sends each catching thread's writes to its own buffer
and every other thread's to the stream it replaced.
"""

from __future__ import annotations

import collections
import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

_lock = threading.Lock()


class _PerThreadStdout(io.TextIOBase):
    """`sys.stdout` while threads catch: `buffers` maps a thread's ident to where its writes go; the other
    threads' go to `stream`, the one replaced (None, as in a process without one: nowhere, as `print` does)."""

    def __init__(self, stream: TextIO | None):
        super().__init__()
        self.stream = stream
        self.buffers: dict[int, TextIO] = {}

    def _target(self) -> TextIO:
        target = self.buffers.get(threading.get_ident(), self.stream)
        return target if target is not None else io.StringIO()

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: Any) -> None:
        self._target().writelines(lines)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        if self.stream is None:
            raise io.UnsupportedOperation("no stdout")
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.stream, "closed", False))

    def __getattr__(self, name: str) -> Any:  # buffer, reconfigure, ...: the replaced stream's (bytes written to
        # `buffer` or `fileno()` bypass the catch, as they bypass any replaced `sys.stdout`)
        if name in ("stream", "buffers"):  # not set yet: not the replaced stream's either
            raise AttributeError(name)
        return getattr(self.stream, name)


# The last proxies made, kept alive (one per stream replaced: one in a program that keeps its stdout). CPython
# 3.11's `print` holds `sys.stdout` without a reference of its own, so a proxy freed when the last catch puts the
# replaced stream back, while another thread is printing through it, crashed the process. Only a proxy that was
# `sys.stdout` a moment ago can be in such a print; a program that swaps its stdout often (a test runner's capture
# per test) does not keep every stream it ever had.
_made: collections.deque[_PerThreadStdout] = collections.deque(maxlen=32)


def _proxy_for(stream: TextIO | None) -> _PerThreadStdout:
    for proxy in reversed(_made):
        if proxy.stream is stream:
            return proxy
    _made.append(_PerThreadStdout(stream))
    return _made[-1]


@contextlib.contextmanager
def printed_by_this_thread(into: TextIO | None = None) -> Iterator[TextIO]:
    """Catch what this thread prints on `sys.stdout` into `into` (default: a new StringIO, yielded); other
    threads print as before. Nests; the last thread to finish puts the replaced stream back, unless
    something else has replaced `sys.stdout` since."""
    buffer = into if into is not None else io.StringIO()
    me = threading.get_ident()
    with _lock:
        proxy = sys.stdout if isinstance(sys.stdout, _PerThreadStdout) else _proxy_for(sys.stdout)
        sys.stdout = proxy
        outer = proxy.buffers.get(me)
        proxy.buffers[me] = buffer
    try:
        yield buffer
    finally:
        with _lock:
            if outer is None:
                proxy.buffers.pop(me, None)
            else:
                proxy.buffers[me] = outer
            if not proxy.buffers and sys.stdout is proxy:
                sys.stdout = proxy.stream
