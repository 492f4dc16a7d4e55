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
    def __init__(self, data_dir: Path | None = None, start_timeout_s: float = 90.0) -> None:
        self._own_dir = data_dir is None
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
                self._props = kb.prepare(self._lib, self.data_dir, self.port, self.controller_port)
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
def started_broker() -> Iterator[KafkaBroker]:
    """A broker of the caller's own (free to stop, restart, pause or kill); a broker that
    cannot start fails the test, never skips it."""
    import pytest

    broker = KafkaBroker()
    try:
        broker.start()
    except Exception as exc:
        broker.cleanup()
        pytest.fail(f"could not start a Kafka broker: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.cleanup()


class KafkaCluster:
    """A replicated KRaft cluster of ``nodes`` combined broker+controller nodes (static
    voters) on loopback, from the same jars, with small heaps. Nodes can be stopped, killed
    and started again one by one; data and ports are kept across restarts."""

    def __init__(self, nodes: int = 3, start_timeout_s: float = 150.0) -> None:
        if nodes < 2:
            raise ValueError("a cluster needs at least 2 nodes (use KafkaBroker for one)")
        self.n = nodes
        self.base_dir = Path(tempfile.mkdtemp(prefix="shadowroute-kafka-cluster-"))
        self.start_timeout_s = start_timeout_s
        self.ports = [kb.free_port() for _ in range(nodes)]
        self.controller_ports = [kb.free_port() for _ in range(nodes)]
        self.version, self._lib = kb.fetch_default()
        self._props = kb.prepare_cluster(
            self._lib, self.base_dir, self.ports, self.controller_ports
        )
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, IO[bytes]] = {}
        self._offsets: dict[int, int] = {}  # where each node's log stood at its last start

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def log_path(self, node: int) -> Path:
        return self._props[node - 1].parent / "broker.log"

    def running(self, node: int) -> bool:
        proc = self._procs.get(node)
        return proc is not None and proc.poll() is None

    def start(self, *nodes: int, wait: bool = True) -> None:
        """Start the given nodes (all by default); with ``wait``, until each logs ready (a
        node alone cannot: it needs a quorum of voters, so start a lone node without waiting
        and ``wait_ready`` once the others are up)."""
        which = list(nodes) or list(range(1, self.n + 1))
        for node in which:
            if self.running(node):
                continue
            path = self.log_path(node)
            self._offsets[node] = path.stat().st_size if path.exists() else 0
            log = path.open("ab")
            self._logs[node] = log
            self._procs[node] = subprocess.Popen(
                kb.broker_command(self._lib, self._props[node - 1], kb.CLUSTER_HEAP_MB),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(*which)

    def wait_ready(self, *nodes: int) -> None:
        """Until each of ``nodes`` (all by default) logs ready since its last start."""
        deadline = time.monotonic() + self.start_timeout_s
        pending = set(nodes or range(1, self.n + 1))
        offsets = self._offsets
        while pending and time.monotonic() < deadline:
            for node in list(pending):
                proc = self._procs[node]
                if proc.poll() is not None:
                    raise BrokerError(f"node {node} exited:\n{self.log_tail(node)}")
                with self.log_path(node).open("rb") as f:
                    f.seek(offsets[node])
                    if kb.READY_LINE.encode() in f.read():
                        pending.discard(node)
            time.sleep(0.2)
        if pending:
            raise BrokerError(f"nodes {sorted(pending)} not ready in {self.start_timeout_s}s")

    def stop(self, node: int, kill_after_s: float = 30.0) -> None:
        proc = self._procs.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(kill_after_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._close_log(node)

    def kill(self, node: int) -> None:
        """SIGKILL, as a crash would."""
        proc = self._procs.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._close_log(node)

    def log_tail(self, node: int, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path(node).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _close_log(self, node: int) -> None:
        log = self._logs.pop(node, None)
        if log is not None:
            log.close()

    def cleanup(self) -> None:
        for node in list(self._procs):
            self.kill(node)
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def started_cluster(nodes: int = 3) -> Iterator[KafkaCluster]:
    """A running cluster of the caller's own; a cluster that cannot start fails the test."""
    import pytest

    try:
        cluster = KafkaCluster(nodes)
    except Exception as exc:
        pytest.fail(f"could not prepare a Kafka cluster: {exc}", pytrace=False)
    try:
        cluster.start()
    except Exception as exc:
        cluster.cleanup()
        pytest.fail(f"could not start a Kafka cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.cleanup()
