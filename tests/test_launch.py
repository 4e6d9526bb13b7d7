"""The server launcher (:mod:`anatomark.launch`), with a small fake in place of MONAI Label (no model, no torch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from anatomark.launch import APP_DIR, HOST, MonaiLabelServer, ServerError, ServerProcess, free_port

#: a stand-in for ``python -m monailabel.main start_server``: answers ``/info/`` with its argv, env and child pid
FAKE = textwrap.dedent(
    """\
    #!{python}
    import json, os, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    args = sys.argv[1:]
    mode = os.environ.get("FAKE_MODE", "serve")
    print("fake server starting", args, flush=True)
    if mode == "die":
        print("boom: cannot load the app", flush=True)
        sys.exit(3)
    if mode == "mute":
        time.sleep(600)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    status = int(os.environ.get("FAKE_STATUS", "200"))

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"argv": args, "child": child.pid, "cwd": os.getcwd(),
                               "env": {{k: v for k, v in os.environ.items() if k.startswith(("MONAI", "FAKE", "ANAT"))}}}})
            self.send_response(status if self.path == "/info/" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *a):
            pass

    port = int(args[args.index("--port") + 1])
    HTTPServer((args[args.index("--host") + 1], port), H).serve_forever()
    """
)


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
        return json.loads(r.read())


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours counts as gone
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind((HOST, port))


def test_monailabel_server_command_env_log_and_clean_stop(tmp_path, fake_python):
    studies = tmp_path / "studies"
    studies.mkdir()
    srv = MonaiLabelServer(
        studies, tmp_path / "work", {"models": "default", "train_epochs": 1},
        python=fake_python, env={"ANATOMARK_CACHE": "/tmp/c", "FAKE_X": "1"}, timeout=30,
    )  # fmt: skip
    assert srv.pid is None and not srv.alive() and srv.log_tail() == ""
    with srv:
        assert srv.alive() and srv.url == f"http://127.0.0.1:{srv.port}"
        info = _info(srv.url)
        argv = info["argv"]
        assert argv[:3] == ["-m", "monailabel.main", "start_server"]
        assert argv[argv.index("--app") + 1] == str(APP_DIR)
        assert argv[argv.index("--studies") + 1] == str(studies)
        assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == str(srv.port)
        conf = [argv[i + 1 : i + 3] for i, a in enumerate(argv) if a == "--conf"]
        assert conf == [["models", "default"], ["train_epochs", "1"]]
        assert info["env"]["MONAI_LABEL_SESSION_PATH"] == str(tmp_path / "work" / "sessions")
        assert info["env"]["ANATOMARK_CACHE"] == "/tmp/c" and info["env"]["FAKE_X"] == "1"
        assert Path(info["cwd"]) == tmp_path / "work"
        assert os.getpgid(srv.pid) == srv.pid  # its own process group
        child = info["child"]
        assert "fake server starting" in srv.log_tail() and srv.log == tmp_path / "work" / "server.log"
    assert not srv.alive()
    assert _gone(child)  # what the server started is stopped with it
    srv.stop()  # again: a no-op


def test_dicomweb_studies_stay_a_url(tmp_path):
    srv = MonaiLabelServer("http://127.0.0.1:8042/dicom-web", tmp_path)
    assert srv.studies == "http://127.0.0.1:8042/dicom-web"
    assert "http://127.0.0.1:8042/dicom-web" in srv._command(1234)


def test_a_server_that_exits_raises_with_the_log_tail(tmp_path, fake_python):
    srv = MonaiLabelServer(tmp_path, tmp_path, python=fake_python, env={"FAKE_MODE": "die"}, timeout=30)
    with pytest.raises(ServerError, match="exited with code 3") as e:
        srv.start()
    assert "boom: cannot load the app" in str(e.value) and str(srv.log) in str(e.value)
    assert not srv.alive()


def test_a_server_that_does_not_answer_is_killed_at_the_timeout(tmp_path, fake_python):
    srv = MonaiLabelServer(tmp_path, tmp_path, python=fake_python, env={"FAKE_MODE": "mute"})
    t0 = time.perf_counter()
    with pytest.raises(ServerError, match="no answer within 1.5 s"):
        srv.start(timeout=1.5)
    assert time.perf_counter() - t0 < 20
    assert not srv.alive()


def test_ready_status_restart_and_kill(tmp_path, fake_python):
    """A 401 counts when asked (a server behind a login); each start gets a port and, with ``{start}``, its own log;
    ``kill`` SIGKILLs the whole group."""
    srv = MonaiLabelServer(
        tmp_path, tmp_path, python=fake_python, env={"FAKE_STATUS": "401"}, ready_status=(200, 401),
        log_name="server-{start}.log", timeout=30,
    )  # fmt: skip
    srv.start()
    first_pid = srv.pid
    assert srv.log.name == "server-1.log"
    with pytest.raises(RuntimeError, match="running already"):
        srv.start()
    srv.kill()
    assert not srv.alive()
    srv.start()
    try:
        assert srv.pid != first_pid and srv.log.name == "server-2.log" and (tmp_path / "server-1.log").is_file()
    finally:
        srv.stop()


def test_server_process_runs_any_command_with_a_fixed_port(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with ServerProcess(cmd, tmp_path, port=port, probe="/", name="files", timeout=30) as srv:
        assert srv.port == port
        with urllib.request.urlopen(srv.url + "/", timeout=5) as r:
            assert r.status == 200
    assert not srv.alive()


def test_importing_the_launcher_loads_neither_monailabel_nor_torch():
    code = "import sys, anatomark.launch; print(sorted(m for m in ('monailabel', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
