"""Each thread's warnings go to its own receiver; other threads' are shown as before."""

import threading
import warnings

from napari_mutualseg.thread_warnings import thread_warnings


def test_threads_receive_their_own_warnings_and_the_hook_is_put_back():
    shown, hook = [], warnings.showwarning
    warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
    try:
        original = warnings.showwarning
        inside, received = threading.Barrier(3, timeout=10), {"a": [], "b": []}

        def job(name):
            with thread_warnings(lambda w: received[name].append(str(w.message))):
                inside.wait()  # the three threads warn while both blocks run
                warnings.warn(f"from {name}", UserWarning, stacklevel=1)
                inside.wait()

        threads = [threading.Thread(target=job, args=(n,)) for n in "ab"]
        for t in threads:
            t.start()
        inside.wait()
        warnings.warn("from the main thread", UserWarning, stacklevel=1)
        inside.wait()
        for t in threads:
            t.join()
        assert received == {"a": ["from a"], "b": ["from b"]}
        assert shown == ["from the main thread"]
        assert warnings.showwarning is original
    finally:
        warnings.showwarning = hook


def test_an_inner_block_takes_the_threads_warnings_until_it_ends():
    outer, inner = [], []
    with thread_warnings(outer.append):
        with thread_warnings(inner.append):
            warnings.warn("inner", UserWarning, stacklevel=1)
        warnings.warn("outer", UserWarning, stacklevel=1)
    assert [str(w.message) for w in inner] == ["inner"]
    assert [str(w.message) for w in outer] == ["outer"]
