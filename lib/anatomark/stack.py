"""The DICOM stack on loopback: Orthanc (DICOMweb), the MONAI Label server on it, and the OHIF viewer.

``python -m anatomark.stack up`` (or ``make stack``) starts, all bound to 127.0.0.1:

- Orthanc from Debian (``orthanc`` + ``orthanc-dicomweb``) with ``configs/orthanc.json``, storage in
  ``runs/stack/orthanc`` (DICOMweb at ``/dicom-web``, DICOM network port off);
- the MONAI Label app on ``http://127.0.0.1:<orthanc>/dicom-web`` serving DX/CR series;
- a small web server for the prebuilt OHIF 3 viewer (``viewer/ohif-dist``, fetched from npm by ``make viewer``)
  plus our OHIF extension and mode (``viewer/anatomark-ohif``). It proxies ``/dicom-web/*`` to Orthanc and
  ``/monai/*`` to MONAI Label, so the browser talks to one origin (no CORS set-up in either server).

``--upload file.dcm ...`` stores DICOM files in Orthanc first; ``--conf KEY VALUE`` (repeatable) passes a server
option to MONAI Label (``make stack CONF="auto_train_every_n_labels 5"``). Everything stops on Ctrl-C.
The same functions start the services in the tests (:func:`start_orthanc`, :func:`start_monailabel`,
:func:`start_viewer`).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from anatomark.launch import HOST, MonaiLabelServer, ServerError, ServerProcess, free_port
from anatomark.paths import REPO_ROOT

ORTHANC_CONFIG = REPO_ROOT / "configs" / "orthanc.json"
VIEWER_DIR = REPO_ROOT / "viewer"
OHIF_DIST = VIEWER_DIR / "ohif-dist"
EXTENSION_DIR = VIEWER_DIR / "anatomark-ohif"
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


class StackError(RuntimeError):
    """A service could not be started (missing program, port in use, crashed at start)."""


class Service:
    """A started service: a process (:class:`anatomark.launch.ServerProcess`) or an in-process server, its URL and log.

    Args:
        name: how the stack names it (``orthanc``, ``monailabel``, ``viewer``).
        url: its ``http://127.0.0.1:<port>``.
        process: the launched process (``None`` for the in-process viewer).
    """

    def __init__(self, name: str, url: str, process: ServerProcess | None = None) -> None:
        self.name, self.url, self.process = name, url, process
        self._server: ThreadingHTTPServer | None = None

    @property
    def proc(self) -> subprocess.Popen | None:
        """The service's process (``None`` for the in-process viewer)."""
        return None if self.process is None else self.process.proc

    @property
    def log(self) -> Path | None:
        """The service's log file (``None`` for the in-process viewer)."""
        return None if self.process is None else self.process.log

    def stop(self) -> None:
        """Stop the service (its process group: ``SIGTERM``, ``SIGKILL`` after 20 s)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.process is not None:
            self.process.stop()

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the log."""
        return "" if self.process is None else self.process.log_tail(n)


# ---------------------------------------------------------------------------------------------------- Orthanc
def orthanc_program() -> str | None:
    return shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin:/sbin"))


def dicomweb_plugin() -> str | None:
    for d in DICOMWEB_PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            p = Path(d) / name
            if p.exists():
                return str(p)
    return None


def orthanc_missing() -> str | None:
    """Why Orthanc cannot be started here (``None`` when it can)."""
    if not orthanc_program():
        return "Orthanc is not installed (make stack-deps: apt-get install orthanc orthanc-dicomweb)"
    if not dicomweb_plugin():
        return "The Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def write_orthanc_config(workdir: Path, http_port: int) -> Path:
    """``configs/orthanc.json`` with this run's storage folder, port and plugin path."""
    cfg = json.loads(ORTHANC_CONFIG.read_text())
    store = workdir / "db"
    store.mkdir(parents=True, exist_ok=True)
    cfg.update(
        {
            "StorageDirectory": str(store),
            "IndexDirectory": str(store),
            "HttpPort": int(http_port),
            "Plugins": [dicomweb_plugin()],
        }
    )
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def start_orthanc(workdir: str | Path, http_port: int | None = None) -> Service:
    """Orthanc on 127.0.0.1:``http_port`` (free port if ``None``) with storage under ``workdir``."""
    why = orthanc_missing()
    if why:
        raise StackError(why)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = http_port or free_port()
    cfg = write_orthanc_config(workdir, port)
    proc = ServerProcess(
        [orthanc_program() or "Orthanc", str(cfg)], workdir, port=port, probe="/dicom-web/studies", timeout=60,
        log_name="orthanc.log", name="orthanc",
    )  # fmt: skip
    return _start("orthanc", proc)


def upload_dicom(orthanc_url: str, files: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Store DICOM files in Orthanc (REST ``POST /instances``); returns Orthanc's answers."""
    out = []
    for f in files:
        req = urllib.request.Request(
            f"{orthanc_url}/instances", data=Path(f).read_bytes(), method="POST",
            headers={"Content-Type": "application/dicom"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            out.append(json.loads(r.read()))
    return out


# ---------------------------------------------------------------------------------------------------- MONAI Label
def start_monailabel(
    studies: str,
    workdir: str | Path,
    port: int | None = None,
    models: str = "default",
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    """The anatomark MONAI Label app (``apps/landmarks``) on 127.0.0.1:``port`` with ``--studies studies``.

    Args:
        studies: a studies folder or a DICOMweb URL.
        workdir: working directory (sessions, ``monailabel.log``, the DICOMweb cache).
        port: the port (default: a free one).
        models: the ``models`` option.
        conf: more ``--conf`` options.
        env: more environment variables (``MONAI_LABEL_INFER_CONCURRENCY`` is 1 unless given).

    Raises:
        StackError: the server exited while starting or did not answer ``/info/`` within 180 s.
    """
    workdir = Path(workdir)
    conf = {"models": models, **(conf or {})}
    if studies.startswith(("http://", "https://")):
        conf.setdefault("dicomweb_cache", str(workdir / "dicomweb-cache"))  # also holds the app's training state
    server = MonaiLabelServer(
        studies, workdir, conf, port=port, env={"MONAI_LABEL_INFER_CONCURRENCY": "1", **(env or {})},
        timeout=180, log_name="monailabel.log",
    )  # fmt: skip
    return _start("monailabel", server)


def _start(name: str, process: ServerProcess) -> Service:
    """Start ``process`` (own process group, output to its log) and wait until it answers; it is stopped if not.

    Raises:
        StackError: it exited, or did not answer in time (the message ends with its log's tail).
    """
    try:
        process.start()
    except ServerError as e:
        raise StackError(str(e)) from e
    return Service(name, process.url, process)


# ---------------------------------------------------------------------------------------------------- viewer
def viewer_app_config(title: str = "anatomark") -> str:
    """OHIF ``app-config.js``: one DICOMweb data source on this origin, our extension and mode loaded at run time."""
    return f"""/* generated by anatomark.stack: OHIF served by anatomark with its extension and mode */
window.config = {{
  routerBasename: '/',
  extensions: ['/anatomark-ohif/extension.js'],
  modes: ['/anatomark-ohif/mode.js'],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'orthanc',
  anatomark: {{ monaiUrl: '/monai', title: {json.dumps(title)} }},
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {{
        friendlyName: 'Orthanc (anatomark)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
        omitQuotationForMultipartRequest: true,
      }},
    }},
  ],
}};
"""


_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


def _make_handler(dist: Path, ext_dir: Path, orthanc_url: str, monai_url: str, app_config: str) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet; errors still go to stderr below
            pass

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-answer (page closed)
                self.close_connection = True

        def _proxy(self, target: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            req = urllib.request.Request(target, data=body, method=self.command, headers=headers)
            try:
                resp = urllib.request.urlopen(req, timeout=300)
            except urllib.error.HTTPError as e:
                resp = e
            except OSError as e:
                msg = f"proxy error: {e}".encode()
                self.send_response(502)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            data = resp.read()
            self.send_response(resp.status if hasattr(resp, "status") else resp.code)
            for k, v in resp.headers.items():
                if k.lower() not in _HOP_HEADERS:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _static(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                return self._send(app_config.encode(), "application/javascript")
            if path.startswith("/anatomark-ohif/"):
                f = (ext_dir / path[len("/anatomark-ohif/") :]).resolve()
                root = ext_dir.resolve()
            else:
                f = (dist / path.lstrip("/")).resolve()
                root = dist.resolve()
            if root not in f.parents and f != root:
                return self._send(b"forbidden", "text/plain", 403)
            if not f.is_file():
                if "." in path.rsplit("/", 1)[-1]:
                    return self._send(b"not found", "text/plain", 404)
                f = dist / "index.html"  # single-page app: every route is index.html
            ctype = mimetypes.guess_type(str(f))[0] or "application/octet-stream"
            if f.suffix in (".js", ".mjs"):
                ctype = "application/javascript"
            elif f.suffix == ".wasm":
                ctype = "application/wasm"
            self._send(f.read_bytes(), ctype)

        def _send(self, data: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _route(self) -> None:
            if self.path.startswith(("/dicom-web/", "/wado")):
                return self._proxy(orthanc_url + self.path)
            if self.path.startswith("/monai/"):
                return self._proxy(monai_url + self.path[len("/monai") :])
            if self.command in ("GET", "HEAD"):
                return self._static()
            self._send(b"method not allowed", "text/plain", 405)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _route

    return Handler


def ohif_missing() -> str | None:
    if not (OHIF_DIST / "index.html").is_file():
        return f"The OHIF viewer is not installed in {OHIF_DIST} (make viewer: npm pack @ohif/app, unpacked)"
    return None


def start_viewer(orthanc_url: str, monai_url: str, port: int | None = None, dist: Path = OHIF_DIST) -> Service:
    """Serve OHIF + our extension on 127.0.0.1:``port``, proxying DICOMweb and MONAI Label (see module docstring)."""
    if not (Path(dist) / "index.html").is_file():
        raise StackError(ohif_missing() or f"no index.html in {dist}")
    port = port or free_port()
    handler = _make_handler(Path(dist), EXTENSION_DIR, orthanc_url, monai_url, viewer_app_config())
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="anatomark-viewer", daemon=True).start()
    svc = Service("viewer", f"http://{HOST}:{port}")
    svc._server = server
    return svc


# ---------------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anatomark.stack", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Orthanc + MONAI Label + OHIF on loopback (Ctrl-C stops all)")
    up.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "stack"))
    up.add_argument("--orthanc-port", type=int, default=8042)
    up.add_argument("--port", type=int, default=8000, help="MONAI Label port")
    up.add_argument("--viewer-port", type=int, default=3000)
    up.add_argument("--models", default="default")
    up.add_argument("--modalities", default="DX,CR", help="series modalities served (add OT for secondary captures)")
    up.add_argument("--upload", nargs="*", default=[], help="DICOM files to store in Orthanc first")
    up.add_argument("--no-viewer", action="store_true")
    up.add_argument(
        "--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="a MONAI Label server option (--conf auto_train_every_n_labels 5), repeatable",
    )  # fmt: skip
    args = p.parse_args(argv)
    conf = {"dicom_modalities": args.modalities, **dict(args.conf)}

    work = Path(args.workdir)
    services: list[Service] = []
    try:
        orthanc = start_orthanc(work / "orthanc", args.orthanc_port)
        services.append(orthanc)
        print(f"Orthanc       {orthanc.url}   (DICOMweb {orthanc.url}/dicom-web, log {orthanc.log})", flush=True)
        if args.upload:
            upload_dicom(orthanc.url, args.upload)
            print(f"Uploaded {len(args.upload)} DICOM file(s)", flush=True)
        ml = start_monailabel(
            f"{orthanc.url}/dicom-web", work / "monailabel", args.port, args.models,
            conf=conf,
        )  # fmt: skip
        services.append(ml)
        print(f"MONAI Label   {ml.url}   (log {ml.log})", flush=True)
        if not args.no_viewer:
            viewer = start_viewer(orthanc.url, ml.url, args.viewer_port)
            services.append(viewer)
            print(f"OHIF viewer   {viewer.url}   (X-rays open in the 'anatomark' mode)", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())  # also when started in the background (SIGINT ignored)
        try:
            while not stop.wait(1.0):
                for s in services:
                    if s.proc is not None and s.proc.poll() is not None:
                        print(f"{s.name} exited:\n{s.log_tail()}", file=sys.stderr)
                        return 1
        except KeyboardInterrupt:
            pass
        return 0
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for s in reversed(services):
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
