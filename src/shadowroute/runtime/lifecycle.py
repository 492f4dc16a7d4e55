"""What every process does around serving: stop on a signal, keep start-up objects out of
the cyclic collector, and say in one line why it could not start.

The only module that installs signal handlers."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable


class StartError(RuntimeError):
    """A process cannot start for a reason of its configuration or of this machine (an
    address in use); ``str()`` says which in one line."""


def freeze_startup_heap() -> None:
    """Put everything allocated during start-up (modules, the config, the routes) out of the
    cyclic collector's reach, once a process serves. Under load a full collection otherwise
    walks those objects every few seconds, stopping the event loop for 20-30 ms each time (the
    whole 64-connection p99 on the proxy benchmark). Objects made later are collected as
    usual; frozen ones are still freed by reference counting."""
    gc.collect()
    gc.freeze()


async def wait_for_signal() -> None:
    """Until SIGTERM or SIGINT; the handlers are removed again on return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def stop_on_sigterm(stop: asyncio.Event) -> None:
    """A worker process: SIGTERM sets ``stop``; SIGINT (a terminal's Ctrl-C reaches the
    whole process group) and SIGHUP (a reload signal sent to the group) are ignored, because
    the supervisor decides when workers stop and what config they serve."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)


def on_sighup(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on the running loop at each SIGHUP (a config reload); returns the
    function that removes the handler again."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, callback)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
