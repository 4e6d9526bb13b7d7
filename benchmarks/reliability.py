"""Reliability of the landmark server (issue 8): malformed requests, load while a training runs, kill -9 crashes.

Usage:
    .venv/bin/python benchmarks/reliability.py [--minutes 5] [--clients 20] [--save-kills 10] [--train-kills 4]
        [--parts malformed,load,crash_save,crash_train] [--out benchmarks/results/reliability.md]

Every server is ``python -m monailabel.main start_server --app apps/landmarks`` on a free 127.0.0.1 port with a temp
studies folder; everything is bounded in count and time and stops by itself.

1. ``malformed``: the full catalogue of ``tests/monailabel/hardening_support.py`` (bad, truncated, corrupt, wrong-type,
   3D and 20000x20000 images on /infer, image upload and as label maps; labels with missing/extra/duplicated
   landmarks, malformed markups/our JSON/LabelMe, bad label maps and label_info; path traversal on every endpoint
   taking an image/label id or tag and in URL paths; oversize uploads at the default 200 MB limit; unknown models and
   bad parameters) against the default configuration; each must get its expected 4xx, no 5xx, the server must stay
   up, the datastore files must be unchanged and nothing may appear outside the studies folder. Unusual but valid
   images (RGB, 16-bit, palette, CMYK, float NIfTI, 16-bit DICOM) must get 200.
2. ``load``: ``--clients`` threads for ``--minutes``, each looping over ``/infer`` (75 %, labelmap or markups, random
   ISBI image) and label saves of its own image (25 %), while ``POST /train`` fine-tunes the served model; reports
   failed requests, latency percentiles and checks that the datastore holds every client's last acknowledged label.
3. ``crash_save``: label saves back to back while the server is SIGKILLed at a random moment, ``--save-kills`` times;
   after each restart every acknowledged label must be stored exactly and the datastore JSON must parse.
4. ``crash_train``: a fine-tuning runs and the server's whole process group (server + training subprocess) is
   SIGKILLed at a random moment, ``--train-kills`` times; after each restart the published weights file must load and
   be what ``/infer`` serves (``model_version``), never a half-written file.

Needs the shipped ``isbi2015_heatmap_unet`` weights; ISBI 2015 images (``../shared/datasets/isbi2015``) for the
load and training parts (synthetic images otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "tests" / "monailabel"))

import hardening_support as hs  # noqa: E402

from anatomark import paths  # noqa: E402

MODEL = hs.MODEL


# ---------------------------------------------------------------------------------------------------- helpers
def git_commit() -> str:
    """HEAD, marked when the server code this benchmark exercises has uncommitted changes."""
    mine = ("lib/anatomark/monailabel", "lib/anatomark/data/image_io.py", "apps/landmarks/main.py")
    return paths.git_commit(mine + ("tests/monailabel/hardening_support.py", "benchmarks/reliability.py"))


def other_trainings() -> list[str]:
    """Other ``anatomark train`` processes, and any other process using more than 30 % of a core right now."""
    out = subprocess.run(["pgrep", "-af", "anatomark train"], capture_output=True, text=True).stdout
    found = [ln for ln in out.splitlines() if ln.strip() and "pgrep" not in ln]
    try:
        import psutil

        me = psutil.Process()
        mine = {me.pid, *(c.pid for c in me.children(recursive=True))}
        procs = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in mine]
        for p in procs:
            p.cpu_percent(None)
        time.sleep(1.0)
        for p in procs:
            try:
                cpu = p.cpu_percent(None)
            except psutil.Error:
                continue
            cmd = " ".join(p.info["cmdline"] or [])[:160]
            if cpu > 30 and cmd and not any(str(p.pid) in f for f in found):
                found.append(f"{p.pid} ({cpu:.0f} % CPU) {cmd}")
    except Exception:  # noqa: BLE001 - psutil missing: pgrep only
        pass
    return found


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def isbi_dir() -> Path | None:
    d = Path(os.environ.get("ANATOMARK_ISBI", REPO.parent / "shared" / "datasets" / "isbi2015"))
    return d if (d / "images").is_dir() else None


def isbi_studies(studies: Path, n: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Copy ``n`` ISBI training images (ids 001..) into ``studies``; returns ids and their senior landmarks."""
    from anatomark.config import load_landmark_set
    from anatomark.data.annotations import read_landmark_csv

    d = isbi_dir()
    studies.mkdir(parents=True, exist_ok=True)
    ls = load_landmark_set("isbi2015_cephalometric")
    if d is None:
        ids = [f"x{i:03d}" for i in range(n)]
        hs.make_studies(studies, ids, h=2400, w=1935)
        return ids, {i: hs.random_points(len(ls), 2400, 1935, seed=k) for k, i in enumerate(ids)}
    gt = read_landmark_csv(d / "landmarks_senior.csv", ls.names)
    ids = []
    for k in range(1, n + 1):
        name = f"{k:03d}.jpg"
        shutil.copy(d / "images" / name, studies / name)
        ids.append(f"{k:03d}")
    return ids, {i: gt[f"{i}.jpg"] for i in ids}


def put_label(url: str, image: str, names: list[str], pts: np.ndarray, timeout: float = 120) -> requests.Response:
    return requests.put(
        f"{url}/datastore/label",
        params={"image": image, "tag": "final"},
        files={"label": (f"{image}.json", hs.label_json(names, pts))},
        timeout=timeout,
    )


def stored_points(url: str) -> dict[str, list]:
    doc = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()
    out = {}
    for i, obj in doc["objects"].items():
        lab = obj.get("labels", {}).get("final")
        if lab:
            out[i] = lab["info"].get("landmarks")
    return out


def names_of(url: str) -> list[str]:
    labels = requests.get(f"{url}/info/", timeout=60).json()["models"][MODEL]["labels"]
    return sorted(labels, key=labels.get)


def train_tasks(url: str) -> list[dict]:
    r = requests.get(f"{url}/train/", params={"all": "true"}, timeout=60)
    return r.json() if r.status_code == 200 and isinstance(r.json(), list) else []


# ---------------------------------------------------------------------------------------------------- 1. malformed
def run_malformed(work: Path) -> dict[str, Any]:
    root = work / "malformed"
    studies = root / "studies"
    hs.make_studies(studies, ["s1", "s2", "s3"])
    (root / "outside.png").write_bytes(hs.png_bytes(hs.xray(seed=9)))
    srv = hs.ServerProcess(root, studies, conf={"models": MODEL}).start()  # default limits (200 MB uploads)
    try:
        names = names_of(srv.url)
        r = put_label(srv.url, "s1", names, hs.random_points(len(names), seed=1))
        assert r.status_code == 200, r.text
        from anatomark.monailabel.middleware import DEFAULT_MAX_UPLOAD_MB

        cases = hs.catalogue(studies, root / "outside.png", names, int(DEFAULT_MAX_UPLOAD_MB * 1e6), full=True)
        before = hs.snapshot(studies)
        outside_before = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        t0 = time.time()
        outcomes = []
        with requests.Session() as s:
            for c in cases:
                outcomes.append(hs.send(srv.url, c, s))
        elapsed = time.time() - t0
        accepted = []
        for name, fname, data in hs.accepted_images():
            c = hs.Case(f"accepted: {name}", "valid", "POST", f"/infer/{MODEL}", query={"output": "json"},
                        files={"file": (fname, data)}, expect=(200,))  # fmt: skip
            accepted.append(hs.send(srv.url, c))
        after = hs.snapshot(studies)
        skip = ("studies/", "cache/", "sessions/")
        outside_after = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        new_outside = sorted(p for p in outside_after - outside_before if not p.startswith(skip))
        new_outside = [p for p in new_outside if not p.startswith("server-")]
        alive = srv.alive()
        crashes = srv.crash_lines()
        ok_after = requests.post(f"{srv.url}/infer/{MODEL}", params={"image": "s1", "output": "json"}, timeout=120)
    finally:
        srv.stop()
    by_cat: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        by_cat[o.case.category]["total"] += 1
        by_cat[o.case.category]["as expected"] += o.ok
        by_cat[o.case.category]["4xx"] += 400 <= o.status < 500
        by_cat[o.case.category]["5xx"] += o.status >= 500
        by_cat[o.case.category]["no answer"] += bool(o.error)
    return {
        "n": len(outcomes),
        "elapsed_s": elapsed,
        "by_category": {k: dict(v) for k, v in by_cat.items()},
        "status_counts": dict(Counter(o.status for o in outcomes)),
        "n_ok": sum(o.ok for o in outcomes),
        "n_5xx": sum(o.status >= 500 for o in outcomes),
        "n_errors": sum(bool(o.error) for o in outcomes),
        "n_4xx": sum(400 <= o.status < 500 for o in outcomes),
        "n_unclear": sum(1 for o in outcomes if o.case.method != "HEAD" and 400 <= o.status < 500 and not o.clear),
        "unexpected": [f"{o.case.name}: got {o.status} {o.error or o.detail[:150]}" for o in outcomes if not o.ok],
        "latency_median_s": pct([o.seconds for o in outcomes], 50),
        "latency_max_s": max(o.seconds for o in outcomes),
        "slowest": sorted(((o.seconds, o.case.name) for o in outcomes), reverse=True)[:3],
        "accepted": [(o.case.name, o.status, o.error or ("" if o.ok else o.detail[:150])) for o in accepted],
        "datastore_unchanged": before == after,
        "datastore_diff": sorted(set(before.items()) ^ set(after.items()))[:10],
        "new_files_outside": new_outside,
        "server_alive": alive,
        "crash_lines": len(crashes),
        "infer_after": ok_after.status_code,
        "examples": [
            (o.case.name, o.status, o.detail[:160])
            for o in outcomes
            if o.case.name
            in (
                "infer upload: 20000x20000 png",
                "infer upload: 3D nifti 64x64x20",
                "label: duplicated landmark",
                "label: unknown landmark (extra)",
                "oversize infer upload",
                "save label tag '../../escape'",
                "infer ?image='/etc/passwd'",
                'train {"max_epochs": -1}',
                "infer unknown model",
            )
        ],
    }


# ---------------------------------------------------------------------------------------------------- 2. load
def run_load(work: Path, minutes: float, clients: int, seed_labels: int = 6) -> dict[str, Any]:
    root = work / "load"
    n_images = clients + seed_labels
    ids, gt = isbi_studies(root / "studies", n_images)
    conf = {"models": MODEL, "train_epochs": "1"}
    srv = hs.ServerProcess(root, root / "studies", conf=conf).start()
    try:
        names = names_of(srv.url)
        for i in ids[clients:]:  # labelled images the training starts from
            r = put_label(srv.url, i, names, gt[i])
            assert r.status_code == 200, r.text
        r = requests.post(f"{srv.url}/train/{MODEL}", json={"max_epochs": 1000}, timeout=60)
        assert r.status_code == 200, r.text
        train_id = r.json()["id"]
        time.sleep(2)
        stop_at = time.time() + minutes * 60
        lat: dict[str, list[float]] = defaultdict(list)
        failures: list[str] = []
        acked: dict[str, list] = {}
        n_acked = Counter()
        attempts = Counter()
        versions: Counter = Counter()
        training_seen: Counter = Counter()
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = random.Random(k)
            own = ids[k]
            with requests.Session() as s:
                n = 0
                while time.time() < stop_at:
                    n += 1
                    with lock:
                        attempts["n"] += 1
                    t0 = time.perf_counter()
                    try:
                        if rng.random() < 0.25:
                            pts = np.round(gt[own] + np.random.default_rng(1000 * k + n).normal(0, 2, gt[own].shape), 3)
                            r = s.put(
                                f"{srv.url}/datastore/label",
                                params={"image": own, "tag": "final"},
                                files={"label": (f"{own}.json", hs.label_json(names, pts))},
                                timeout=hs.TIMEOUT,
                            )
                            op = "label save"
                            if r.status_code == 200:
                                with lock:
                                    acked[own] = pts.tolist()
                                    n_acked[own] += 1
                        else:
                            fmt = rng.choice(["labelmap", "slicer_markups"])
                            out = rng.choice(["json", "all"])
                            r = s.post(
                                f"{srv.url}/infer/{MODEL}",
                                params={"image": rng.choice(ids), "output": out},
                                data={"params": json.dumps({"result_format": fmt})},
                                timeout=hs.TIMEOUT,
                            )
                            op = f"infer ({out})"
                            if r.status_code == 200 and out == "json":
                                with lock:
                                    versions[r.json().get("model_version")] += 1
                    except requests.RequestException as e:
                        with lock:
                            failures.append(f"client {k}: {type(e).__name__}: {str(e)[:120]}")
                        continue
                    dt = time.perf_counter() - t0
                    with lock:
                        lat[op].append(dt)
                        lat["all"].append(dt)
                        if r.status_code != 200:
                            failures.append(f"client {k} {op}: {r.status_code} {r.text[:150]}")

        def watcher() -> None:
            while time.time() < stop_at:
                for t in train_tasks(srv.url):
                    if t["id"] == train_id:
                        training_seen[t["status"]] += 1
                time.sleep(10)

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        threads.append(threading.Thread(target=watcher, daemon=True))
        t_start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(minutes * 60 + 2 * hs.TIMEOUT)
        duration = time.time() - t_start
        task = next((t for t in train_tasks(srv.url) if t["id"] == train_id), {})
        training_status_at_end = task.get("status")
        stored = stored_points(srv.url)
        lost = []
        for img, pts in acked.items():
            got = stored.get(img)
            if got is None or not np.allclose(np.array(got, dtype=float), np.array(pts), atol=1e-3):
                lost.append(img)
        requests.delete(f"{srv.url}/train/", timeout=60)
        alive = srv.alive()
        crashes = srv.crash_lines()
        rss = _rss_mb(srv.proc.pid) if srv.proc else float("nan")
    finally:
        srv.stop()
    return {
        "minutes": minutes,
        "clients": clients,
        "duration_s": duration,
        "n_requests": attempts["n"],
        "n_failed": len(failures),
        "failures": failures[:20],
        "latency": {
            op: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "p99": pct(v, 99), "max": max(v) if v else None}
            for op, v in lat.items()
        },
        "throughput_rps": len(lat["all"]) / duration if duration else 0.0,
        "labels_acked": sum(n_acked.values()),
        "images_with_acked_label": len(acked),
        "lost_labels": lost,
        "model_versions_served": dict(versions),
        "training_status_samples": dict(training_seen),
        "training_status_at_end": training_status_at_end,
        "server_alive": alive,
        "crash_lines": len(crashes),
        "server_rss_mb": rss,
        "isbi": isbi_dir() is not None,
    }


def _rss_mb(pid: int) -> float:
    try:
        import psutil

        p = psutil.Process(pid)
        return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20
    except Exception:  # noqa: BLE001
        return float("nan")


# ---------------------------------------------------------------------------------------------------- 3. crash save
def run_crash_save(work: Path, kills: int) -> dict[str, Any]:
    root = work / "crash_save"
    ids = ["s1", "s2", "s3", "s4"]
    hs.make_studies(root / "studies", ids)
    srv = hs.ServerProcess(root, root / "studies", conf={"models": MODEL}).start()
    rng = np.random.default_rng(0)
    acked: dict[str, list] = {}
    totals = Counter()
    problems: list[str] = []
    restarts: list[float] = []
    try:
        names = names_of(srv.url)
        for cycle in range(kills):
            stop = threading.Event()
            inflight: dict[str, list] = {}
            state = {"died_in_flight": False}

            def saver(stop: threading.Event, cycle: int, inflight: dict[str, list], state: dict) -> None:
                n = 0
                with requests.Session() as s:
                    while not stop.is_set():
                        image = ids[n % len(ids)]
                        pts = hs.random_points(len(names), seed=10_000 * cycle + n)
                        inflight[image] = pts.tolist()
                        try:
                            r = s.put(
                                f"{srv.url}/datastore/label",
                                params={"image": image, "tag": "final"},
                                files={"label": (f"{image}.json", hs.label_json(names, pts))},
                                timeout=30,
                            )
                        except requests.RequestException:
                            state["died_in_flight"] = True
                            return
                        if r.status_code == 200:
                            acked[image] = pts.tolist()
                            totals["acked"] += 1
                        else:
                            problems.append(f"cycle {cycle}: save answered {r.status_code}")
                        n += 1

            t = threading.Thread(target=saver, args=(stop, cycle, inflight, state), daemon=True)
            t.start()
            time.sleep(float(rng.uniform(0.3, 3.0)))
            srv.kill9()
            stop.set()
            t.join(40)
            totals["in_flight_at_kill"] += state["died_in_flight"]
            t0 = time.time()
            srv.start()
            restarts.append(time.time() - t0)
            try:
                json.loads((root / "studies" / "datastore_v2.json").read_text())
            except ValueError as e:
                problems.append(f"cycle {cycle}: datastore JSON unreadable after kill: {e}")
            stored = stored_points(srv.url)
            for image, pts in acked.items():
                got = stored.get(image)
                if got is None:
                    problems.append(f"cycle {cycle}: acknowledged label of {image} LOST")
                    continue
                g = np.array(got, dtype=float)
                if np.allclose(g, pts, atol=1e-3):
                    totals["checked_equal_acked"] += 1
                elif image in inflight and np.allclose(g, inflight[image], atol=1e-3):
                    totals["unacked_in_flight_applied"] += 1
                    acked[image] = inflight[image]  # it is the stored state now
                else:
                    problems.append(f"cycle {cycle}: {image} holds neither the acknowledged nor the in-flight label")
            leftovers = list((root / "studies").rglob(".*.part"))
            if leftovers:
                problems.append(f"cycle {cycle}: partial files left: {leftovers}")
    finally:
        srv.stop()
    return {
        "kills": kills,
        "acked_saves": totals["acked"],
        "kills_with_save_in_flight": totals["in_flight_at_kill"],
        "labels_checked": totals["checked_equal_acked"] + totals["unacked_in_flight_applied"],
        "unacked_in_flight_applied": totals["unacked_in_flight_applied"],
        "problems": problems,
        "restart_s_median": pct(restarts, 50),
    }


# ---------------------------------------------------------------------------------------------------- 4. crash train
def run_crash_train(work: Path, kills: int, n_labelled: int = 8) -> dict[str, Any]:
    from anatomark.model import load_model
    from anatomark.monailabel.published import file_version

    root = work / "crash_train"
    ids, gt = isbi_studies(root / "studies", n_labelled)
    srv = hs.ServerProcess(root, root / "studies", conf={"models": MODEL}).start()
    published = root / "studies" / ".anatomark" / "models" / f"{MODEL}.pt"
    rng = np.random.default_rng(1)
    cycles = []
    run_dir = root / "studies" / ".anatomark" / "train" / MODEL

    def weight_tmps() -> set[str]:
        tmp = list(published.parent.glob(f".{published.name}.*.tmp")) if published.parent.is_dir() else []
        tmp += [*run_dir.glob(".tmp-*.pt"), *run_dir.glob("*.pt.tmp")] if run_dir.is_dir() else []
        return {str(p) for p in tmp}

    try:
        names = names_of(srv.url)
        for i in ids:
            assert put_label(srv.url, i, names, gt[i]).status_code == 200
        for cycle in range(kills):
            r = requests.post(f"{srv.url}/train/{MODEL}", json={"max_epochs": 50}, timeout=60)
            assert r.status_code == 200, r.text
            seen: list[str] = []
            stop = threading.Event()

            def poll(stop: threading.Event, seen: list[str]) -> None:
                while not stop.is_set():
                    try:
                        res = requests.post(
                            f"{srv.url}/infer/{MODEL}", params={"image": ids[0], "output": "json"}, timeout=60
                        )
                        if res.status_code == 200:
                            v = res.json()["model_version"]
                            if not seen or seen[-1] != v:
                                seen.append(v)
                    except requests.RequestException:
                        return
                    stop.wait(1.0)

            t = threading.Thread(target=poll, args=(stop, seen), daemon=True)
            t.start()
            targeted = cycle % 2 == 1  # odd cycles: kill the moment a weights file is being written
            t_kill0 = time.time()
            during_write = False
            if targeted:
                stale = weight_tmps()  # e.g. a checkpoint temp file of the previous, killed run: not a live write
                while time.time() - t_kill0 < 150:
                    if weight_tmps() - stale:
                        during_write = True
                        break
                    time.sleep(0.002)
            else:
                time.sleep(float(rng.uniform(20, 90)))
            wait = time.time() - t_kill0
            versions_before = list(seen)
            pub_mtime = published.stat().st_mtime if published.is_file() else None
            srv.kill9()
            stop.set()
            t.join(70)
            t0 = time.time()
            srv.start()
            restart = time.time() - t0
            res = requests.post(f"{srv.url}/infer/{MODEL}", params={"image": ids[0], "output": "json"}, timeout=120)
            served = res.json().get("model_version") if res.status_code == 200 else None
            loads, file_v = None, None
            if published.is_file():
                try:
                    load_model(published)
                    loads = True
                except Exception as e:  # noqa: BLE001
                    loads = f"{type(e).__name__}: {e}"
                file_v = file_version(published)
            tmp_left = sorted(Path(p).name for p in weight_tmps())  # harmless: never read, replaced next time
            cycles.append(
                {
                    "cycle": cycle + 1,
                    "killed_after_s": round(wait, 1),
                    "targeted": targeted,
                    "weights_tmp_file_seen_at_kill": during_write,
                    "versions_seen_before_kill": len(versions_before),
                    "last_seen_before_kill": versions_before[-1] if versions_before else None,
                    "published_file_existed": pub_mtime is not None,
                    "infer_status_after_restart": res.status_code,
                    "served_version": served,
                    "published_file_version": file_v,
                    "published_file_loads": loads,
                    "served_is_published": served == file_v if file_v else None,
                    "served_not_older_than_last_seen": (
                        served == versions_before[-1] or (file_v is not None and served == file_v)
                        if versions_before
                        else True
                    ),
                    "tmp_files_left": tmp_left,
                    "restart_s": round(restart, 1),
                }
            )
    finally:
        srv.stop()
    return {"kills": kills, "cycles": cycles, "labelled_images": len(ids), "isbi": isbi_dir() is not None}


# ---------------------------------------------------------------------------------------------------- report
def fmt_s(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"


def run_line(part: dict[str, Any]) -> list[str]:
    r = part.get("run")
    if not r:
        return []
    others = "; ".join(r["other_trainings"]) or "none"
    return [
        f"_Run: `{r['command']}` on {r['date']} at commit {r['commit']}, {r['seconds']} s; other trainings / busy "
        f"processes when this part ended: {others}_",
        "",
    ]


def report(args: argparse.Namespace, res: dict[str, Any], meta: dict[str, Any]) -> str:
    L = ["# Server reliability (issue 8)", ""]
    L += [
        "Reproduce all four parts in one run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reliability.py` (about "
        "17 min on 2 cores); parts can be run alone with `--parts` and merged into one report with `--merge`.",
        "",
    ]
    L += [
        f"- Command of the latest run: `{meta['command']}` (each part below names its own run)",
        f"- Date: {meta['date']}; total run time {meta['total_min']:.1f} min",
        f"- Machine: {meta['machine']}",
        f"- Git commit: {meta['commit']}",
        f"- Other trainings / busy processes at the start of the latest run: {meta['others_start'] or 'none'}",
        f"- Other trainings / busy processes at its end: {meta['others_end'] or 'none'}",
        "",
    ]
    m = res.get("malformed")
    if m:
        L += ["## 1. Malformed requests", ""]
        L += run_line(m)
        L += [
            f"{m['n']} requests in {m['elapsed_s']:.0f} s against a server with the default options (200 MB upload "
            f"limit): **{m['n_ok']}/{m['n']} answered as expected, {m['n_4xx']} with a 4xx, {m['n_5xx']} with a 5xx, "
            f"{m['n_errors']} without an answer**; 4xx without a message (HEAD excluded): {m['n_unclear']}. "
            f"Server alive afterwards: {m['server_alive']} (unhandled exceptions in its log: {m['crash_lines']}; "
            f"/infer afterwards: {m['infer_after']}). Datastore files unchanged: **{m['datastore_unchanged']}**; new "
            f"files outside the studies folder: {m['new_files_outside'] or 'none'}.",
            "",
            "| category | requests | as expected | 4xx | 5xx | no answer |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for cat, c in sorted(m["by_category"].items()):
            L.append(
                f"| {cat} | {c.get('total', 0)} | {c.get('as expected', 0)} | {c.get('4xx', 0)} | "
                f"{c.get('5xx', 0)} | {c.get('no answer', 0)} |"
            )
        L += ["", f"Status codes: {dict(sorted(m['status_counts'].items()))}. Latency median "
              f"{fmt_s(m['latency_median_s'])} s, max {fmt_s(m['latency_max_s'])} s "
              f"(slowest: {', '.join(f'{n} {s:.1f} s' for s, n in m['slowest'])}).", ""]  # fmt: skip
        if m["unexpected"]:
            L += ["Unexpected answers:", ""] + [f"- {u}" for u in m["unexpected"]] + [""]
        L += ["Valid but unusual images (must be accepted, 200):", ""]
        L += [f"- {n}: {s}{' ' + e if e else ''}" for n, s, e in m["accepted"]] + [""]
        L += ["Example messages:", ""] + [f"- {n} -> {s}: {d}" for n, s, d in m["examples"]] + [""]
    ld = res.get("load")
    if ld:
        L += ["## 2. Load while a training runs", ""]
        L += run_line(ld)
        L += [
            f"{ld['clients']} concurrent clients for {ld['minutes']:g} min ({ld['duration_s']:.0f} s measured), "
            f"75 % `/infer` (random {'ISBI 1935x2400' if ld['isbi'] else 'synthetic'} image, label map or markups, "
            "`output=json` or `all`) and 25 % label saves of the client's own image, while `POST /train` fine-tunes "
            f"the served model (training status samples: {ld['training_status_samples']}, at the end: "
            f"{ld['training_status_at_end']}).",
            "",
            f"- Requests: {ld['n_requests']}, **failed: {ld['n_failed']}**; throughput {ld['throughput_rps']:.2f} "
            "requests/s",
            f"- Labels acknowledged: {ld['labels_acked']} (on {ld['images_with_acked_label']} images); **lost: "
            f"{len(ld['lost_labels'])}** {ld['lost_labels'] or ''}",
            f"- Model versions served during the test: {ld['model_versions_served']}",
            f"- Server alive: {ld['server_alive']}, unhandled exceptions in its log: {ld['crash_lines']}, RSS "
            f"(server + training) at the end: {ld['server_rss_mb']:.0f} MB",
            "",
            "| operation | n | p50 s | p95 s | p99 s | max s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for op, v in sorted(ld["latency"].items()):
            L.append(
                f"| {op} | {v['n']} | {fmt_s(v['p50'])} | {fmt_s(v['p95'])} | {fmt_s(v['p99'])} | {fmt_s(v['max'])} |"
            )
        if ld["failures"]:
            L += ["", "Failures (first 20):", ""] + [f"- {f}" for f in ld["failures"]]
        L.append("")
    cs = res.get("crash_save")
    if cs:
        L += ["## 3. kill -9 during label saves", ""]
        L += run_line(cs)
        L += [
            f"{cs['kills']} SIGKILLs at random moments of back-to-back label saves ({cs['acked_saves']} acknowledged "
            f"saves; the kill hit a save in flight {cs['kills_with_save_in_flight']} times); after each restart every "
            f"acknowledged label was compared with the datastore ({cs['labels_checked']} checks; "
            f"{cs['unacked_in_flight_applied']} times the unacknowledged in-flight save had been fully applied "
            f"instead, never a mix). Problems: **{len(cs['problems'])}** {cs['problems'] or ''}. Restart median "
            f"{fmt_s(cs['restart_s_median'])} s.",
            "",
        ]
    ct = res.get("crash_train")
    if ct:
        L += ["## 4. kill -9 during training", ""]
        L += run_line(ct)
        L += [
            f"{ct['kills']} SIGKILLs of the server's process group (server + training subprocess) during a "
            f"fine-tuning on {ct['labelled_images']} labelled images; after each restart the published weights file "
            "must load and be what `/infer` serves, and the served version must not be older than the last one seen "
            "before the kill.",
            "",
            "Cycles 1, 3, ... kill at a random moment; cycles 2, 4, ... poll every 2 ms and kill the moment a new "
            "weights temp file (publish copy, model.pt or last.pt being written) appears, i.e. during a weights "
            "write. 'tmp files left': temp files of interrupted writes after the restart (never read).",
            "",
            "| # | kill | killed after s | versions seen | published file loads | served = published | "
            "served not older | tmp files left | restart s |",
            "|---:|---|---:|---:|---|---|---|---|---:|",
        ]
        for c in ct["cycles"]:
            L.append(
                f"| {c['cycle']} | "
                f"{('during a weights write' if c['weights_tmp_file_seen_at_kill'] else 'targeted, no write seen') if c['targeted'] else 'random'} | "
                f"{c['killed_after_s']} | {c['versions_seen_before_kill']} | "
                f"{c['published_file_loads'] if c['published_file_existed'] or c['published_file_loads'] else 'no file yet'} | "
                f"{c['served_is_published']} | {c['served_not_older_than_last_seen']} | {c['tmp_files_left'] or '-'} | "
                f"{c['restart_s']} |"
            )
        L.append("")
    return "\n".join(L) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="malformed,load,crash_save,crash_train")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--save-kills", type=int, default=10)
    ap.add_argument("--train-kills", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reliability.md"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument(
        "--merge", default=None, help="raw results (--json) of an earlier run: its parts not run now are reported too"
    )
    args = ap.parse_args()
    from anatomark.paths import model_dir

    if not (model_dir() / f"{MODEL}.pt").is_file():
        print(f"skip: model weights {model_dir() / (MODEL + '.pt')} not found")
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    meta = {
        "command": " ".join(
            [
                "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"),
                ".venv/bin/python",
                "benchmarks/reliability.py",
                *map(shlex.quote, sys.argv[1:]),
            ]
        ),  # fmt: skip
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "commit": git_commit(),
        "others_start": other_trainings(),
    }
    t0 = time.time()
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="anatomark-reliability-") as tmp:
        work = Path(tmp)
        for part in parts:
            print(f"== {part}", flush=True)
            t = time.time()
            if part == "malformed":
                res[part] = run_malformed(work)
            elif part == "load":
                res[part] = run_load(work, args.minutes, args.clients)
            elif part == "crash_save":
                res[part] = run_crash_save(work, args.save_kills)
            elif part == "crash_train":
                res[part] = run_crash_train(work, args.train_kills)
            else:
                raise SystemExit(f"unknown part {part!r}")
            res[part]["run"] = {
                "command": meta["command"],
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": meta["commit"],
                "seconds": round(time.time() - t),
                "other_trainings": other_trainings(),
            }
            print(f"   {time.time() - t:.0f} s", flush=True)
    meta["others_end"] = other_trainings()
    meta["total_min"] = (time.time() - t0) / 60
    if args.merge and Path(args.merge).is_file():
        earlier = json.loads(Path(args.merge).read_text())["results"]
        res = {**{k: v for k, v in earlier.items() if k not in res}, **res}
        order = ["malformed", "load", "crash_save", "crash_train"]
        res = {k: res[k] for k in sorted(res, key=lambda k: order.index(k) if k in order else 9)}
    text = report(args, res, meta)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
