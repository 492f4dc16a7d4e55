"""A real single-node Apache Kafka broker for tests and benchmarks.

Uses the logic of ``scripts/kafka-broker`` (jars from Maven Central, cached outside the tree):
``KafkaBroker().start()`` formats a fresh data folder, starts ``kafka.Kafka`` on free loopback
ports and returns once the broker logs "Kafka Server started"; ``restart()`` keeps the data
folder and ports; ``stop()`` sends SIGTERM, then SIGKILL after 30 s. The broker's output goes
to ``<data dir>/broker.log`` (see ``log_tail()``).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka-broker"


def _load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("shadowroute_kafka_broker", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


kb = _load_script()


class BrokerError(RuntimeError):
    pass


class KafkaBroker:
    def __init__(
        self,
        data_dir: Path | None = None,
        start_timeout_s: float = 90.0,
        extra_props: dict[str, str] | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.extra_props = dict(extra_props or {})
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="shadowroute-kafka-"))
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.controller_port = 0
        self.version = ""
        self.start_seconds = 0.0
        """Wall time of the last start (format included on the first)."""
        self._lib: Path | None = None
        self._props: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the broker is not running"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> str:
        """Start the broker (formatting the data folder the first time); return bootstrap."""
        began = time.monotonic()
        if self._props is None:
            self.version, self._lib = kb.fetch_default()
            self.port = kb.free_port()
            self.controller_port = kb.free_port()
            try:
                self._props = kb.prepare(
                    self._lib, self.data_dir, self.port, self.controller_port, self.extra_props
                )
            except RuntimeError as exc:
                raise BrokerError(str(exc)) from exc
        assert self._lib is not None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            kb.broker_command(self._lib, self._props),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = began + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._close_log()
                raise BrokerError(f"broker exited with {self._proc.returncode}:\n{self.log_tail()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                if kb.READY_LINE.encode() in f.read():
                    self.start_seconds = time.monotonic() - began
                    return self.bootstrap
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker not ready in {self.start_timeout_s}s:\n{self.log_tail()}")

    def stop(self, kill_after_s: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(kill_after_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._close_log()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def started_broker(extra_props: dict[str, str] | None = None) -> Iterator[KafkaBroker]:
    """A broker of the caller's own (free to stop, restart, pause or kill); a broker that
    cannot start fails the test, never skips it. ``extra_props`` adds server settings."""
    import pytest

    broker = KafkaBroker(extra_props=extra_props)
    try:
        broker.start()
    except Exception as exc:
        broker.cleanup()
        pytest.fail(f"could not start a Kafka broker: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.cleanup()
