"""`semcache serve` as a child process on a free loopback port, for the tests that run the real
server: it takes extra environment settings and exposes the process, so a test can SIGKILL it
mid-write or SIGTERM it with requests in flight.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ADMIN_TOKEN = "test-admin-token"
# Generous: on a loaded 2-core machine the model load alone can take many seconds.
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
PORT_ATTEMPTS = 3


class PortTaken(Exception):
    """The port picked for a server was bound by someone else first."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def semcache_command() -> list[str]:
    script = Path(sys.executable).with_name("semcache")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server"]


class ServerProcess:
    """One `semcache serve` process; the constructor returns once /readyz answers 200."""

    def __init__(
        self, data_dir: Path, graph_dir: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self._env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SEMCACHE_ADMIN_TOKEN": ADMIN_TOKEN,
            # The ONNX graph the session fixture exported once: no export per server start.
            "SEMCACHE_GRAPH_DIR": str(graph_dir),
            **(env or {}),
        }
        # Other test runs share the machine: a free port can be taken before the server binds
        # it. Only that is retried; any other early exit fails at once.
        for attempt in range(PORT_ATTEMPTS):
            self._launch()
            try:
                self._wait_ready()
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise AssertionError(f"no free port:\n{self.log_text()}") from None
            except BaseException:
                self.kill()
                raise

    def _launch(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        command = [*semcache_command(), "serve", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--data-dir", str(self.data_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log_text():
                    raise PortTaken
                raise AssertionError(f"server exited early:\n{self.log_text()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {READY_TIMEOUT_S} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL (a crash: no shutdown code runs) and reap; returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit status; killed (and TimeoutExpired) if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def ensure_stopped(self) -> None:
        """For teardown: a server a test left running is stopped, and killed if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # then terminate killed it
                self.terminate()
