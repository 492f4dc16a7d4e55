"""A real MLflow tracking server for tests: ``mlflow server`` (the test extra's ``mlflow``)
with a SQLite backend in a temporary folder, on a free loopback port.

``MlflowServer().start()`` returns once ``/health`` answers; ``stop()`` ends the server's whole
process group (SIGTERM, then SIGKILL after 15 s). The server's output goes to
``<data dir>/server.log`` (``log_tail()``). ``register_model`` creates a registered model with
versions, each from its own run, through the REST API (plain httpx: the code under test is not
used to set the scene).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from proxyutil import free_port


class MlflowError(RuntimeError):
    pass


class MlflowServer:
    def __init__(self, start_timeout_s: float = 240.0) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="shadowroute-mlflow-"))
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        """Start the server and wait for ``/health``; ``MlflowError`` when it cannot."""
        self.port = free_port()
        env = os.environ | {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner processes
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        }
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--default-artifact-root", str(self.data_dir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise MlflowError(f"cannot run {cmd[0]} -m mlflow: {exc}") from None
        deadline = started + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MlflowError(
                    f"mlflow server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    self.start_seconds = time.monotonic() - started
                    return
            time.sleep(0.25)
        raise MlflowError(
            f"mlflow server not up within {self.start_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass(frozen=True)
class Registered:
    """A registered model made for one test: ``versions[i]`` came from run ``runs[i]``."""

    name: str
    versions: tuple[str, ...]
    runs: tuple[str, ...]


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/api/2.0/mlflow/{path}", json=body)
    if r.status_code != 200:
        raise MlflowError(f"POST {path}: {r.status_code} {r.text}")
    out: dict[str, Any] = r.json()
    return out


def register_model(
    url: str, versions: int = 2, aliases: dict[str, int] | None = None
) -> Registered:
    """A new registered model with ``versions`` versions, each logged from its own run, and
    ``aliases`` {alias: version index} set."""
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, timeout=10.0) as client:
        exp = _post(client, "experiments/create", {"name": name})["experiment_id"]
        _post(client, "registered-models/create", {"name": name})
        runs, numbers = [], []
        for _ in range(versions):
            run = _post(client, "runs/create", {"experiment_id": exp})["run"]["info"]["run_id"]
            mv = _post(
                client,
                "model-versions/create",
                {"name": name, "source": f"runs:/{run}/model", "run_id": run},
            )["model_version"]
            runs.append(run)
            numbers.append(mv["version"])
        for alias, index in (aliases or {}).items():
            _post(
                client,
                "registered-models/alias",
                {"name": name, "alias": alias, "version": numbers[index]},
            )
    return Registered(name, tuple(numbers), tuple(runs))


def model_version(url: str, name: str, version: str) -> dict[str, Any]:
    """The server's ``model_version`` document, tags as a dict."""
    r = httpx.get(
        f"{url}/api/2.0/mlflow/model-versions/get",
        params={"name": name, "version": version},
        timeout=10.0,
    )
    r.raise_for_status()
    mv: dict[str, Any] = r.json()["model_version"]
    mv["tags"] = {t["key"]: t["value"] for t in mv.get("tags", [])}
    return mv


def alias_version(url: str, name: str, alias: str) -> str | None:
    r = httpx.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": name}, timeout=10)
    r.raise_for_status()
    for a in r.json()["registered_model"].get("aliases", []):
        if a["alias"] == alias:
            return str(a["version"])
    return None
