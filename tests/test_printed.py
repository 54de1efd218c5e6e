"""What a library prints is caught for the calling thread only: other threads keep their stdout."""

from __future__ import annotations

import sys
import threading

from mde.printed import printed_by_this_thread


def test_only_the_catching_thread_is_caught_and_stdout_comes_back(capsys):
    original = sys.stdout
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait()
        print("from another thread")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with printed_by_this_thread() as caught:
        print("from the library")
        started.set()
        done.wait(10)
        with printed_by_this_thread() as inner:  # nests
            print("inner")
        print("outer again")
    thread.join()
    assert caught.getvalue() == "from the library\nouter again\n" and inner.getvalue() == "inner\n"
    assert sys.stdout is original
    assert capsys.readouterr().out == "from another thread\n"


def test_overlapping_catches_never_lose_stdout(capsys):
    """`contextlib.redirect_stdout` in four threads at once restored each other's buffers: stdout stayed a StringIO,
    and every later print was lost."""
    original = sys.stdout
    barrier = threading.Barrier(4)
    caught: list[str] = []

    def opener(k: int):
        barrier.wait()
        for i in range(50):
            with printed_by_this_thread() as buffer:
                print(f"library {k} {i}")
            caught.append(buffer.getvalue())

    threads = [threading.Thread(target=opener, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.stdout is original
    assert sorted(caught) == sorted(f"library {k} {i}\n" for k in range(4) for i in range(50))
    print("still here")
    assert capsys.readouterr().out == "still here\n"


def test_opening_models_leaves_a_telemetry_threads_lines_alone(tiny_export, capsys):
    """A robot printing telemetry while it opens a model: 199 lines sent, 9 arrived (ONNX Runtime's session opening
    swapped stdout for the whole process)."""
    from mde.runtime.estimator import DepthEstimator

    stop = threading.Event()
    sent = 0

    def telemetry():
        nonlocal sent
        while not stop.wait(0.0005):
            print("tick")
            sent += 1

    thread = threading.Thread(target=telemetry)
    thread.start()
    try:
        for _ in range(3):
            DepthEstimator.open(tiny_export / "model.onnx").close()
    finally:
        stop.set()
        thread.join()
    assert capsys.readouterr().out.count("tick\n") == sent > 0
