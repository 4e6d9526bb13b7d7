"""End-to-end ``/infer`` latency of the real MONAI Label server on a 1935 x 2400 cephalogram, and server RSS.

Usage:
    .venv/bin/python benchmarks/server_latency.py [--requests 20] [--warmup 3] [--format labelmap]
        [--out benchmarks/results/server_latency.md]

Starts ``python -m monailabel.main start_server --app apps/landmarks`` on a free loopback port with a temp studies
folder holding one ISBI 2015 image (copied at run time), sends warm-up requests, then times ``--requests``
``POST /infer/<model>?image=<id>`` calls through monailabel's own client (request, inference, label-map PNG,
multipart response, client-side parsing) and reports median / p95 and the server's resident memory.
Skips with a clear message when ../shared/datasets/isbi2015 or the model weights are absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import provenance, write_report

REPO = Path(__file__).resolve().parents[1]


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "isbi2015"))
    ap.add_argument("--image", default="151.jpg", help="ISBI image file (1935 x 2400)")
    ap.add_argument("--model", default="default", help="a shipped model name or an alias of configs/app.yaml")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--format", default="labelmap", choices=["labelmap", "slicer_markups"])
    ap.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="app conf")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "server_latency.md"))
    args = ap.parse_args()
    src = Path(args.dataset) / "images" / args.image
    if not src.is_file():
        print(f"skip: {src} not found (place the ISBI 2015 dataset in ../shared/datasets)")
        return 0
    sys.path.insert(0, str(REPO / "lib"))
    from monailabel.client import MONAILabelClient
    from PIL import Image

    from anatomark.config import load_yaml
    from anatomark.launch import MonaiLabelServer, ServerError
    from anatomark.paths import CONFIG_DIR, model_dir

    args.model = (load_yaml(CONFIG_DIR / "app.yaml").get("models") or {}).get(args.model, args.model)
    if not (model_dir() / f"{args.model}.pt").is_file():
        print(f"skip: model weights {model_dir() / (args.model + '.pt')} not found")
        return 0
    with Image.open(src) as im:
        size = im.size

    tmp = Path(tempfile.mkdtemp(prefix="anatomark-bench-"))
    studies = tmp / "studies"
    studies.mkdir()
    shutil.copy(src, studies / src.name)
    image_id = src.name.split(".")[0]
    server = MonaiLabelServer(
        studies, tmp, {"models": args.model, **dict(args.conf)}, env={"ANATOMARK_CACHE": str(tmp / "cache")},
        timeout=180,
    )  # fmt: skip
    t_start = time.perf_counter()
    try:
        try:
            server.start()
        except ServerError as e:
            print(str(e)[-3000:])
            return 1
        url, proc = server.url, server.proc
        startup = time.perf_counter() - t_start
        rss_idle = _rss_mb(proc.pid)
        client = MONAILabelClient(url, tmpdir=str(tmp / "client"))
        (tmp / "client").mkdir()
        params = {"result_format": args.format}
        for _ in range(args.warmup):
            client.infer(args.model, image_id, params)
        times, server_totals, stages = [], [], []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            path, res = client.infer(args.model, image_id, params)
            times.append(time.perf_counter() - t0)
            server_totals.append(res["latencies"]["total"])
            stages.append(res["latencies"])
            os.unlink(path)
        rss = _rss_mb(proc.pid)
        version = res["model_version"]
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    t = np.asarray(times)
    med, p95 = float(np.median(t)), float(np.percentile(t, 95))
    stage_keys = [k for k in stages[0] if k != "model_load"]
    stage_med = {k: float(np.median([s[k] for s in stages])) for k in stage_keys}
    import torch  # noqa: F401  (imported for provenance(): the report names the server's torch version)

    lines = [
        "# End-to-end /infer latency of the MONAI Label server",
        "",
        *provenance(),
        f"- Model: {args.model} version {version}; image {src.name} ({size[0]} x {size[1]} px); "
        f"result_format {args.format}; monailabel 0.8.5 server (uvicorn, 1 worker) on 127.0.0.1",
        f"- Requests: {args.warmup} warm-up, then {args.requests} timed, sequential, through `monailabel.client.MONAILabelClient.infer`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| end-to-end median | {med:.3f} s |",
        f"| end-to-end p95 | {p95:.3f} s |",
        f"| end-to-end min / max | {t.min():.3f} / {t.max():.3f} s |",
        f"| server-side total (median) | {float(np.median(server_totals)):.3f} s |",
        "| server stages (median) | " + ", ".join(f"{k} {v:.3f} s" for k, v in stage_med.items()) + " |",
        f"| server RSS idle (after start) | {rss_idle:.0f} MB |",
        f"| server RSS after the requests | {rss:.0f} MB |",
        f"| server start until /info/ answers | {startup:.1f} s |",
        "",
        "Target (issue 3): median <= 0.5 s on 2 cores. `pre` = JPEG decode + intensity scaling + resize,",
        "`infer` = network, `post` = decoding + drawing the label map, `write` = PNG encoding.",
        "",
    ]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
