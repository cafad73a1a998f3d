"""How a run stops: Ctrl-C (KeyboardInterrupt) and SIGTERM (Stopped, a time limit or `kill`) take
effect where the work can be resumed from, never in the middle of what must be done whole."""

import signal
import threading
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """SIGTERM received: stop like Ctrl-C (save what resumes), then exit with status 143."""


@contextmanager
def uninterrupted():
    """Ctrl-C or SIGTERM inside the block takes effect at its end (KeyboardInterrupt, Stopped), so
    that what it does is done whole: an optimizer step with its bookkeeping, a pool of worker
    processes started with its handle kept. Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda n, frame: received.append(n)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if signal.SIGTERM in received:
        raise Stopped
    if received:
        raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM (a time limit, `kill`) stops a stage like Ctrl-C does: it saves what resumes."""

    def stop(number, frame):
        raise Stopped

    signal.signal(signal.SIGTERM, stop)
