"""Start and stop local servers on loopback: the one launcher of the MONAI Label app for tests, benchmarks and the
stack.

:class:`MonaiLabelServer` runs ``python -m monailabel.main start_server --app apps/landmarks`` on 127.0.0.1 in its
own process group (so a stop or a ``SIGKILL`` also reaches the training subprocesses it starts), with its output in a
log file, and waits until ``/info/`` answers; when the server exits or does not answer in time it is stopped and
:class:`ServerError` says why, with the log's tail. :class:`ServerProcess` is the same for any command serving HTTP
(Orthanc in :mod:`anatomark.stack`).

Nothing here imports monailabel or torch: the server runs in a subprocess.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from anatomark.paths import REPO_ROOT

#: the anatomark MONAI Label app
APP_DIR = REPO_ROOT / "apps" / "landmarks"
#: the only interface servers started here listen on
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server exited while starting or did not answer in time (the message ends with its log's tail)."""


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` now (the kernel's choice; another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _answer(url: str, timeout: float) -> int | None:
    """The HTTP status ``url`` answers with (``None`` when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):  # refused, reset, timed out, or not HTTP yet
        return None


class ServerProcess:
    """A command that serves HTTP on 127.0.0.1, run in its own process group with its output in a log file.

    Args:
        cmd: the command, or a function of the port that builds it (called at each start).
        workdir: the working directory (created); the log goes here.
        port: the port; ``None`` picks a free one at each start.
        env: variables added to this process's environment (``None`` values remove one).
        probe: the path that must answer before :meth:`start` returns, e.g. ``"/info/"``.
        ready_status: the HTTP statuses that count as started (e.g. ``(200, 401)`` for a server behind a login).
        timeout: seconds :meth:`start` waits for the probe by default.
        log_name: the log's file name in ``workdir``; ``{start}`` is replaced by the number of the start (1, 2, ...).
        name: how messages name the server.
        poll: seconds between two probes.
    """

    def __init__(
        self,
        cmd: Sequence[str] | Callable[[int], Sequence[str]],
        workdir: str | Path,
        *,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        probe: str = "/",
        ready_status: Collection[int] = (200,),
        timeout: float = 120.0,
        log_name: str = "server.log",
        name: str = "server",
        poll: float = 0.3,
    ) -> None:
        self.cmd = cmd
        self.workdir = Path(workdir)
        self.fixed_port = port
        self.port = port or 0
        self.env = dict(env or {})
        self.probe = probe
        self.ready_status = tuple(ready_status)
        self.timeout = timeout
        self.log_name = log_name
        self.name = name
        self.poll = poll
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.started_at: float | None = None

    # ------------------------------------------------------------------------------------------------ state
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the port of the latest start)."""
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        """The log file of the latest start."""
        return self.workdir / self.log_name.format(start=max(self.starts, 1))

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group's), ``None`` before the first start."""
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the log of the latest start (``""`` when there is none)."""
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def command(self) -> list[str]:
        """The command line for the current port."""
        return [str(a) for a in (self.cmd(self.port) if callable(self.cmd) else self.cmd)]

    # ------------------------------------------------------------------------------------------------ start / stop
    def start(self, timeout: float | None = None) -> ServerProcess:
        """Start the server and wait until :attr:`probe` answers with one of :attr:`ready_status`.

        Args:
            timeout: seconds to wait (default :attr:`timeout`).

        Returns:
            ``self``.

        Raises:
            ServerError: the server exited, or did not answer within ``timeout``; it has been killed.
            RuntimeError: it is running already.
        """
        if self.alive():
            raise RuntimeError(f"{self.name} is running already at {self.url}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.fixed_port or free_port()
        self.starts += 1
        env = {**os.environ, **{k: v for k, v in self.env.items() if v is not None}}
        for k in [k for k, v in self.env.items() if v is None]:
            env.pop(k, None)
        cmd = self.command()
        self.started_at = time.perf_counter()
        with self.log.open("w") as f:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self.wait_ready(self.timeout if timeout is None else timeout)
        except BaseException:  # not up, or interrupted while waiting: never leave a server behind
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until the probe answers with a ready status.

        Raises:
            ServerError: the server exited, or did not answer within ``timeout`` seconds.
        """
        deadline = time.time() + timeout
        while True:
            if _answer(f"{self.url}{self.probe}", timeout=5) in self.ready_status:
                return
            code = None if self.proc is None else self.proc.poll()
            if code is not None or time.time() > deadline:
                why = f"exited with code {code}" if code is not None else f"no answer within {timeout:g} s"
                raise ServerError(
                    f"{self.name} did not start at {self.url}{self.probe} ({why}); log {self.log}:\n{self.log_tail()}"
                )
            time.sleep(self.poll)

    def _signal_group(self, sig: int) -> None:
        """Send ``sig`` to the server's process group, while its id is still ours (the server not yet reaped)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # the whole group is gone already
            pass

    def kill(self, wait: float = 30.0) -> None:
        """``SIGKILL`` the server and everything it started: a crash, no clean-up (a no-op when not started)."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that SIGKILL does not end
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: ``SIGTERM`` to its process group, ``SIGKILL`` after ``timeout`` seconds; what the group
        still holds then (a training subprocess) is killed. A no-op when it was never started or has been stopped."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        try:  # the leader is reaped: its group id stays reserved while members are left
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> ServerProcess:
        if not self.alive():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class MonaiLabelServer(ServerProcess):
    """``python -m monailabel.main start_server`` for a MONAI Label app on 127.0.0.1 (see the module docstring).

    Sessions go to ``workdir/sessions`` (``MONAI_LABEL_SESSION_PATH``); ``env`` adds more variables (the tests set
    ``ANATOMARK_CACHE`` and ``MONAI_LABEL_INFER_CONCURRENCY``).

    Args:
        studies: the ``--studies`` argument: a folder or a DICOMweb URL.
        workdir: working directory, sessions and log (created).
        conf: ``--conf`` options, e.g. ``{"models": "default"}``.
        app: the app folder (default :data:`APP_DIR`).
        python: the interpreter (default this one).
        **kwargs: :class:`ServerProcess` options (``port``, ``env``, ``ready_status``, ``timeout``, ``log_name``...).
    """

    def __init__(
        self,
        studies: str | Path,
        workdir: str | Path,
        conf: Mapping[str, object] | None = None,
        *,
        app: str | Path = APP_DIR,
        python: str = sys.executable,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("probe", "/info/")
        kwargs.setdefault("timeout", 180.0)
        kwargs.setdefault("name", "MONAI Label server")
        super().__init__(self._command, workdir, **kwargs)  # type: ignore[arg-type]
        self.studies = studies if isinstance(studies, str) and "://" in studies else Path(studies)
        self.conf = {str(k): str(v) for k, v in (conf or {}).items()}
        self.app = Path(app)
        self.python = python
        self.env = {"MONAI_LABEL_SESSION_PATH": str(self.workdir / "sessions"), **self.env}

    def _command(self, port: int) -> list[str]:
        conf_args = [a for k, v in self.conf.items() for a in ("--conf", k, v)]
        return [
            self.python, "-m", "monailabel.main", "start_server",
            "--app", str(self.app), "--studies", str(self.studies), *conf_args,
            "--host", HOST, "--port", str(port),
        ]  # fmt: skip

    def start(self, timeout: float | None = None) -> MonaiLabelServer:
        """Start the server and wait until ``/info/`` answers (see :meth:`ServerProcess.start`)."""
        super().start(timeout)
        return self

    def __enter__(self) -> MonaiLabelServer:
        if not self.alive():
            self.start()
        return self
