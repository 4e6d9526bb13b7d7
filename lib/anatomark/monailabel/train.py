"""MONAI Label training task: fine-tune a landmark model on the datastore's ``final`` labels, publish it only when it
is not worse than the served model.

Runs in MONAI Label's training subprocess (one at a time, see the app's ``/train`` policy). Uses
:func:`anatomark.training.train`; the validation split is fixed per image id (a hash), so an image stays in the same
split across retrainings however many labels arrive.

**Publication gate** (:class:`GatePolicy`): nothing is published during the run. At its end the fine-tuned model (the
run's best epoch, a *candidate*) and the served model are scored the same way (full-image inference, as ``/infer``
does) on the same fixed validation labels: MRE in mm. The candidate is published (atomically, as a new version, see
:meth:`~anatomark.monailabel.published.PublishedModel.publish`) only when there are at least ``min_val_images``
scored validation images, its MRE is at most the served MRE plus ``tolerance_mm``, it misses no more landmarks, and
the served model is still the one it was fine-tuned from. Otherwise it is kept as a rejected candidate
(``<work_dir>/<model>/rejected/<time>-<version>.pt`` and ``.json`` with the numbers) and the served model is
unchanged. ``train_stats`` in ``/info/`` says which (``gate``).

Images deleted or unreadable during a run are skipped with a log line (training and scoring) and listed in
``train_stats`` (``skipped_images``).

Multi-GPU: the same request options as MONAI Label's ``BasicTrainTask`` (``multi_gpu``, ``gpus``) train with
DistributedDataParallel in one process per GPU (:mod:`anatomark.distributed`); only rank 0 validates.
Without GPUs, ``cpu_processes`` >= 2 (or ``ANATOMARK_DDP_CPU_PROCESSES``) runs that path in CPU processes (gloo).

Every run records the ``final`` labels it read (``labels_used.json``: image id -> label timestamp), so the app's
scheduled retraining (``auto_train_interval``) can tell whether labels arrived since the last training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from anatomark import distributed
from anatomark.errors import AnatomarkError
from anatomark.monailabel.published import DEFAULT_KEEP_VERSIONS, PublishedModel, VersionConflictError, file_version
from anatomark.monailabel.validation import BoolOption, GpuListOption, NumberOption, OptionSchema
from anatomark.paths import atomic_write

logger = logging.getLogger(__name__)


def in_validation(image_id: str, val_fraction: float) -> bool:
    """Fixed split: an image is a validation image when the hash of its id falls below ``val_fraction``."""
    h = int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < val_fraction


def collect_items(datastore: Datastore, landmark_set_names: list[str]) -> list[dict[str, Any]]:
    """Training items ``{"image", "landmarks" (K, 2) NaN = missing, "spacing", "id"}`` from ``final`` labels.

    Images whose file is gone (deleted while the datastore was read) are skipped with a log line.
    """
    items = []
    for image_id in sorted(datastore.get_labeled_images()):
        try:
            got = datastore.label_points(image_id, DefaultLabelTag.FINAL.value)  # type: ignore[attr-defined]
        except AnatomarkError as e:
            logger.warning(f"Skipping {image_id}: {e}")
            continue
        if got is None:
            continue
        pts, spacing = got
        if pts.shape != (len(landmark_set_names), 2) or np.isnan(pts).all():
            continue
        uri = datastore.get_image_uri(image_id)
        if not uri or not Path(uri).is_file():
            logger.warning(f"Skipping {image_id}: its image file is gone ({uri or 'no uri'})")
            continue
        items.append({"image": uri, "landmarks": pts, "spacing": spacing, "id": image_id})
    return items


def final_labels(datastore: Datastore) -> dict[str, float]:
    """Image id -> timestamp of its ``final`` label (changes when a label is saved again)."""
    tag = DefaultLabelTag.FINAL.value
    return {i: float(datastore.get_label_info(i, tag).get("ts", 0)) for i in sorted(datastore.get_labeled_images())}


#: Default learning rate of a server fine-tuning. The recipes' rates (1e-3 .. 2e-3) are for training from scratch; with
#: a fresh AdamW state every parameter moves by about the learning rate in the first step. Fine-tuning the shipped
#: cascade on two ISBI images (one more for validation), MRE on three others (benchmarks/fine_tune_lr.py): 1.55 mm
#: shipped; 1 epoch at 2e-3 -> 30.1 mm, 3e-4 -> 1.52, 1e-4 -> 1.51; 3 epochs at 2e-3 -> 15.3, 3e-4 -> 1.55, 1e-4 -> 1.52.
FINE_TUNE_LR = 1e-4


@dataclass
class GatePolicy:
    """When a fine-tuned candidate replaces the served model (app options of the same names).

    Attributes:
        tolerance_mm: "not worse" = candidate MRE <= served MRE + ``tolerance_mm`` on the same validation labels.
            Default 0 (strictly not worse): with 0.05 mm two fine-tunings on garbage labels in a row were each
            published and the served model drifted 1.832 -> 1.848 -> 1.875 mm (``benchmarks/results/trust_gate.md``);
            a tolerance lets small losses add up, since every gate compares with the model served then.
        min_val_images: fewer scored validation images than this and the candidate is not published (the gate cannot
            judge; it is kept as a rejected candidate, "too few validation labels"). 0 publishes a fine-tuning that has
            no validation image at all unchecked (not recommended: that is how a model gets silently worse).
        keep_versions: published versions kept for rollback (the served one included).
        keep_rejected: rejected candidates kept (files + numbers).
    """

    tolerance_mm: float = 0.0
    min_val_images: int = 1
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    keep_rejected: int = 3

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> GatePolicy:
        """From the app options ``gate_tolerance_mm``, ``gate_min_val_images``, ``keep_versions``, ``keep_rejected``."""
        d = cls()
        p = cls(
            tolerance_mm=float(conf.get("gate_tolerance_mm", d.tolerance_mm)),
            min_val_images=max(0, int(conf.get("gate_min_val_images", d.min_val_images))),
            keep_versions=max(1, int(conf.get("keep_versions", d.keep_versions))),
            keep_rejected=max(0, int(conf.get("keep_rejected", d.keep_rejected))),
        )
        if not (math.isfinite(p.tolerance_mm) and p.tolerance_mm >= 0):
            raise ValueError(f"gate_tolerance_mm must be a number >= 0, got {p.tolerance_mm}")
        return p


def score_on_labels(models: Mapping[str, Any], items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score several models the same way on the same labelled images: full-image inference (``model.predict``, as the
    infer task runs it) and radial errors in mm against the labels.

    Args:
        models: name -> :class:`~anatomark.model.LandmarkModel` (all of one landmark set).
        items: ``{"image", "landmarks" (K, 2) NaN = missing, "spacing", "id"}``.

    Returns:
        ``{"images": [ids scored], "skipped": [{"id", "reason"}], "models": {name: {"mre_mm", "missed", "per_image"}}}``
        where ``mre_mm`` is the mean over every labelled landmark of every scored image (``None`` when none),
        ``missed`` the number of labelled landmarks a model gave no point for. An image that cannot be read
        (deleted meanwhile, corrupt) is skipped for every model.
    """
    from anatomark.data.image_io import load_image
    from anatomark.metrics import radial_errors

    first = next(iter(models.values()))
    default_spacing = first.landmark_set.default_spacing_mm
    errors: dict[str, list[np.ndarray]] = {n: [] for n in models}
    scored, skipped = [], []
    for it in items:
        try:
            img = load_image(it["image"], spacing=it.get("spacing"), default_spacing=default_spacing)
            preds = {n: m.predict(img).points for n, m in models.items()}
        except (OSError, AnatomarkError) as e:
            logger.warning(f"Validation image {it.get('id', it['image'])} skipped: {e}")
            skipped.append({"id": it.get("id", str(it["image"])), "reason": str(e)})
            continue
        for n, p in preds.items():
            errors[n].append(radial_errors(p, it["landmarks"], img.spacing))
        scored.append(it.get("id", str(it["image"])))
    out: dict[str, Any] = {"images": scored, "skipped": skipped, "models": {}}
    for n, errs in errors.items():
        e = np.stack(errs) if errs else np.zeros((0, 0))
        labelled = ~np.isnan(e)
        finite = e[np.isfinite(e)]
        out["models"][n] = {
            "mre_mm": round(float(finite.mean()), 4) if finite.size else None,
            "missed": int((labelled & ~np.isfinite(e)).sum()),
            "per_image": [_mean_finite(r) for r in e],
        }
    return out


def _mean_finite(errors: np.ndarray) -> float | None:
    finite = errors[np.isfinite(errors)]
    return round(float(finite.mean()), 4) if finite.size else None


def gate_decision(scores: dict[str, Any], policy: GatePolicy) -> tuple[bool, str]:
    """``(publish, reason)`` for a candidate against the served model, from :func:`score_on_labels` of both
    (``models`` ``candidate`` and ``served``): publish when at least ``policy.min_val_images`` validation images were
    scored, the candidate misses no more landmarks and its MRE is at most the served MRE + ``policy.tolerance_mm``."""
    n = len(scores["images"])
    cand, served = scores["models"]["candidate"], scores["models"]["served"]
    if n < policy.min_val_images:
        return False, (
            f"too few validation labels: {n} validation image(s) scored, the gate needs {policy.min_val_images}; "
            "the served model is kept. Validation images are a fixed share (val_fraction) of the labelled images, "
            "chosen by image id: label more images"
        )
    c, s = cand["mre_mm"], served["mre_mm"]
    if n == 0:  # only with min_val_images 0
        return True, "no validation image: published unchecked (gate_min_val_images is 0)"
    if c is None or s is None:
        return False, "no labelled landmark on the validation images could be scored"
    if cand["missed"] > served["missed"]:
        return (
            False,
            f"the candidate gives no point for {cand['missed']} labelled landmark(s), the served one for {served['missed']}",
        )
    if c <= s + policy.tolerance_mm:
        return True, f"validation MRE {c:.3f} mm <= served {s:.3f} mm + {policy.tolerance_mm:g} mm on {n} image(s)"
    return (
        False,
        f"worse than the served model: validation MRE {c:.3f} mm > served {s:.3f} mm + {policy.tolerance_mm:g} mm on {n} image(s)",
    )


def best_metric(sdr_2mm_percent: float | None) -> float:
    """The 0..1 accuracy ``train_stats.best_metric`` that viewers show as a bar (3D Slicer's MONAILabel module shows it
    as "Accuracy", coloured from red below 0.5 to dark green above 0.9): the share of validation landmarks within 2 mm
    (SDR at 2 mm, the field's usual success rate) at the epoch with the lowest validation MRE; 0 without validation."""
    if sdr_2mm_percent is None or not math.isfinite(sdr_2mm_percent):
        return 0.0
    return round(min(1.0, max(0.0, sdr_2mm_percent / 100.0)), 4)


class TrainProgress:
    """The ``on_epoch`` callback of a server training: rewrites ``stats.json`` (atomically) after every epoch, so that
    ``/info/`` ``train_stats.<model>`` shows the running training.

    Picklable (a multi-process training runs it in rank 0 and copies its state back). A cascade trains its stages one
    after the other through the same callback; ``stage`` follows the folder each stage writes (``global``, ``local``),
    ``total_epochs`` and ``epoch`` are per stage, ``stage_index`` / ``stages`` say which stage of how many.

    Args:
        path: ``stats.json`` of the run.
        base: fields kept in every record (model, versions, image counts, ``pid`` of the training process ...).
        stages: stage names in order (``["train"]`` for a single network, ``["global", "local"]`` for a cascade).
        t0: start time of the run.
    """

    def __init__(self, path: str | Path, base: dict[str, Any], stages: Sequence[str], t0: float):
        self.path = str(path)
        self.base = dict(base)
        self.stages = list(stages)
        self.t0 = float(t0)
        self.stage = self.stages[0]
        self.best_val: float | None = None
        self.best_sdr: float | None = None
        self.last: dict[str, Any] = {}

    def record(self, status: str = "RUNNING", **extra: Any) -> dict[str, Any]:
        """The current ``train_stats`` record (``total_time`` stays 0 while running: 3D Slicer's module shows epoch
        progress only while it is 0 and treats a non-zero value as "finished"; ``elapsed_s`` is the running time)."""
        elapsed = round(time.time() - self.t0, 2)
        rec = {
            **self.base,
            "status": status,
            "stage": self.stage,
            "stage_index": self.stages.index(self.stage) + 1 if self.stage in self.stages else 1,
            "stages": len(self.stages),
            "epoch": int(self.last.get("epoch", 0)),
            "total_epochs": int(self.last.get("total_epochs", self.base.get("epochs", 0)) or 0),
            "loss": _finite_or_none(self.last.get("loss")),
            "val_mre_mm": _finite_or_none(self.last.get("val_mre_mm")),
            "best_val_mre_mm": self.best_val,
            "best_metric": best_metric(self.best_sdr),
            "metric": "best_metric = share of validation landmarks within 2 mm at the epoch with the lowest MRE",
            "elapsed_s": elapsed,
            "total_time": 0 if status == "RUNNING" else elapsed,
            "updated": round(time.time(), 3),
            **extra,
        }
        return rec

    def write(self, rec: dict[str, Any]) -> None:
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps(rec, indent=1))

    def __call__(self, rec: dict[str, Any]) -> None:
        stage = Path(str(rec.get("out_dir", ""))).name
        if stage in self.stages and stage != self.stage:
            self.stage, self.best_val, self.best_sdr = stage, None, None  # a new stage: its own best
        self.last = dict(rec)
        val = _finite_or_none(rec.get("val_mre_mm"))
        if val is not None and (self.best_val is None or val < self.best_val):
            self.best_val = round(val, 4)
            self.best_sdr = (rec.get("val_sdr") or {}).get("2.0")
        try:
            self.write(self.record())
        except OSError as e:  # progress is informative: never fail a training for it
            logger.warning(f"Could not write training progress to {self.path}: {e}")


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 6) if math.isfinite(f) else None


def _pid_alive(pid: Any) -> bool:
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


class LandmarkTrainTask(TrainTask):
    """``POST /train/<model>``: fine-tune from the current weights on all images with a ``final`` label; publish the
    result only when the gate (:class:`GatePolicy`) finds it not worse than the served model.

    Request options: ``max_epochs`` (default from the app's ``train_epochs``), ``val_fraction``, ``lr`` (default
    from the app's ``train_lr``, :data:`FINE_TUNE_LR`), ``batch_size``; ``multi_gpu`` (default from the app's
    ``multi_gpu``, false) and ``gpus`` (``all`` or ``"0,1"``) as in MONAI Label; ``cpu_processes`` (CPU stand-in for
    several GPUs, see :mod:`anatomark.distributed`).

    Args:
        handle: the served model (current weights to start from, where to publish).
        work_dir: folder for training runs (``<work_dir>/<model>/``: ``model.pt``, ``last.pt``, ``history.json``,
            ``stats.json``, ``rejected/``).
        epochs: default number of epochs per fine-tuning run.
        val_fraction: share of labelled images held out for validation (fixed per image id).
        multi_gpu: default of the request option ``multi_gpu``.
        lr: default fine-tuning learning rate.
        gate: publication gate and how many versions / rejected candidates to keep.
    """

    #: The request options checked before a training starts (``POST /train/<model>`` answers 422 with the reason,
    #: see :func:`anatomark.monailabel.validation.app_request_validator`); bounds inclusive, other keys pass.
    OPTIONS: ClassVar[OptionSchema] = OptionSchema(
        {
            "max_epochs": NumberOption(int, 1, 10000),
            "val_fraction": NumberOption(float, 0.0, 0.9),
            "lr": NumberOption(float, 1e-8, 1.0),
            "batch_size": NumberOption(int, 1, 1024),
            "cpu_processes": NumberOption(int, 1, 64),
            "multi_gpu": BoolOption(),
            "gpus": GpuListOption(),
        },
        what="Training option",
    )

    @classmethod
    def options_problem(cls, options: Mapping[str, Any]) -> str | None:
        """Why ``options`` (a request's JSON object) is not accepted by :attr:`OPTIONS`, or ``None``.

        Args:
            options: the request options.

        Returns:
            ``"Training option '<name>' must be ..., got ..."`` for the first bad option, or ``None``.
        """
        return cls.OPTIONS.problem(options)

    def __init__(
        self,
        handle: PublishedModel,
        work_dir: str | Path,
        epochs: int = 10,
        val_fraction: float = 0.2,
        multi_gpu: bool = False,
        lr: float = FINE_TUNE_LR,
        gate: GatePolicy | None = None,
    ):
        super().__init__(f"Fine-tune {handle.name} on the datastore's final landmark labels")
        self.handle = handle
        self.run_dir = Path(work_dir) / handle.name
        self.epochs = int(epochs)
        self.val_fraction = float(val_fraction)
        self.multi_gpu = bool(multi_gpu)
        self.lr = float(lr)
        self.gate = gate or GatePolicy()

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": self.epochs,
            "val_fraction": self.val_fraction,
            "lr": self.lr,
            "multi_gpu": self.multi_gpu,
            "gpus": "all",
        }

    def labels_used(self) -> dict[str, float] | None:
        """The ``final`` labels (id -> timestamp) the latest training of this model read; ``None`` if none ran."""
        p = self.run_dir / "labels_used.json"
        try:
            return {k: float(v) for k, v in json.loads(p.read_text())["labels"].items()} if p.is_file() else None
        except (OSError, ValueError, KeyError, AttributeError):
            return None

    def stats(self) -> dict[str, Any]:
        """``/info/`` ``train_stats.<model>``: the running training's progress (``status`` ``RUNNING``), or the last
        training's result (``DONE``, ``FAILED``, ``STOPPED``). A record still saying ``RUNNING`` whose training process
        is gone was stopped (``DELETE /train/``: MONAI Label kills the process, which cannot write) or died (killed,
        server restarted): it is answered, and rewritten, as ``STOPPED`` / ``FAILED``."""
        p = self.run_dir / "stats.json"
        try:
            rec = json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}
        if not isinstance(rec, dict) or rec.get("status") != "RUNNING" or _pid_alive(rec.get("pid")):
            return rec if isinstance(rec, dict) else {}
        stopped = self._last_task_status() == "STOPPED"
        rec = {
            **rec,
            "status": "STOPPED" if stopped else "FAILED",
            "error": "stopped (DELETE /train/)" if stopped else "the training process ended without a result",
            "total_time": rec.get("elapsed_s", 0) or 0,
            "published": False,
        }
        try:
            with atomic_write(p) as tmp:
                tmp.write_text(json.dumps(rec, indent=1))
        except OSError:
            pass
        return rec

    def _last_task_status(self) -> str | None:
        """Status of this server's latest training task of this model (MONAI Label's task list), if any."""
        try:
            from monailabel.utils.async_tasks.utils import tasks

            mine = [t for t in tasks("train") if t.get("request", {}).get("model") == self.handle.name]
        except Exception:  # noqa: BLE001 - outside a server there is no task list
            return None
        return mine[-1].get("status") if mine else None

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        t0 = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        epochs = int(request.get("max_epochs", self.epochs))
        base = {
            "model": self.handle.name,
            "epochs": epochs,
            "trigger": request.get("trigger", "request"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "pid": os.getpid(),
        }
        progress = TrainProgress(self.run_dir / "stats.json", base, ["train"], t0)
        progress.write(progress.record())
        try:
            return self._run(request, datastore, progress)
        except Exception as e:
            try:
                progress.write(progress.record("FAILED", error=str(e)[:500], published=False))
            except OSError:
                pass
            raise

    def _run(self, request: dict[str, Any], datastore: Datastore, progress: TrainProgress) -> dict[str, Any]:
        from anatomark.training import train, train_distributed

        t0 = progress.t0
        model, version = self.handle.get()
        names = list(model.landmark_set.names)
        progress.base["started_from_version"] = version
        if model.recipe.get("kind") == "cascade":
            progress.stages = ["global", "local"]
            progress.stage = "global"
        with atomic_write(self.run_dir / "labels_used.json") as tmp:  # before anything can fail: no retry loop
            tmp.write_text(json.dumps({"labels": final_labels(datastore), "started": time.time()}))
        items = collect_items(datastore, names)
        if not items:
            raise AnatomarkError("No image has a 'final' landmark label yet; save labels before training")
        val_fraction = float(request.get("val_fraction", self.val_fraction))
        train_items = [it for it in items if not in_validation(it["id"], val_fraction)]
        val_items = [it for it in items if in_validation(it["id"], val_fraction)]
        if not train_items:  # every labelled image hashed into validation: train on them rather than on nothing
            train_items, val_items = val_items, []
        recipe = json.loads(json.dumps(model.recipe))
        recipe["landmark_set"] = model.landmark_set.to_dict()  # the set travels with the model, not only its name
        recipe["train"]["val_fraction"] = 0.0
        recipe["train"]["lr"] = float(request.get("lr", self.lr))  # fine-tuning, not the recipe's from-scratch rate
        if "batch_size" in request:
            recipe["train"]["batch_size"] = request["batch_size"]
        epochs = int(request.get("max_epochs", self.epochs))
        progress.base["epochs"] = epochs
        init = self.handle.path()
        for stale in ("model.pt", "last.pt"):
            (self.run_dir / stale).unlink(missing_ok=True)
        plan = distributed.plan(
            request.get("multi_gpu", self.multi_gpu), request.get("gpus", "all"), request.get("cpu_processes")
        )
        logger.info(
            f"Fine-tuning {self.handle.name} (version {version}) on {len(train_items)} images, "
            f"validating on {len(val_items)}, {epochs} epoch(s), "
            + (f"{plan.world_size} processes ({plan.backend}: {', '.join(plan.devices)})" if plan else "one process")
        )
        args = (recipe, train_items, self.run_dir)
        kwargs: dict[str, Any] = {
            "init_weights": init,
            "epochs": epochs,
            "val_items": val_items or None,
            "progress": False,
            "info": {"fine_tuned_from": version, "train_images": [it["id"] for it in train_items]},
            "on_epoch": progress,
        }
        progress.base.update(n_train=len(train_items), n_val=len(val_items))
        progress.write(progress.record())
        res = train_distributed(plan, *args, **kwargs) if plan else train(*args, **kwargs)
        candidate = Path(res["model_path"])
        if not candidate.is_file():
            raise AnatomarkError(f"The fine-tuning of {self.handle.name} wrote no model (no finite loss or score)")
        progress.write(progress.record(stage_detail="publication gate: scoring candidate and served model"))
        gate = self._gate(candidate, model, version, val_items)
        skipped = sorted(
            {it["id"] for it in train_items if not Path(it["image"]).is_file()} | {s["id"] for s in gate["skipped"]}
        )
        stats = {
            **progress.record("DONE"),
            "model": self.handle.name,
            "started_from_version": version,
            "model_version": self.handle.current_version() or version,
            "published": gate["decision"] == "published",
            "gate": {k: v for k, v in gate.items() if k != "skipped"},
            "epochs": epochs,
            "n_train": len(train_items),
            "n_val": len(val_items),
            "val_images": [it["id"] for it in val_items],
            "skipped_images": skipped,
            "best_val_mre_mm": res.get("best_val_mre_mm"),
            "best_epoch": _best_epoch(res.get("history", [])),
            "processes": plan.world_size if plan else 1,
            "backend": plan.backend if plan else None,
            "total_time": round(time.time() - t0, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with atomic_write(self.run_dir / "stats.json") as tmp:
            tmp.write_text(json.dumps(stats, indent=1))
        logger.info(f"Training done: {stats}")
        return stats

    def _gate(
        self, candidate: Path, served: Any, served_version: str, val_items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Score candidate and served model on ``val_items``; publish the candidate or keep it as rejected."""
        from anatomark.model import load_model

        cand_version = file_version(candidate)
        scores = score_on_labels(
            {"candidate": load_model(candidate, device=self.handle.device), "served": served}, val_items
        )
        publish, reason = gate_decision(scores, self.gate)
        out: dict[str, Any] = {
            "decision": "published" if publish else "rejected",
            "reason": reason,
            "metric": "MRE (mm) on the fixed validation labels, full-image inference like /infer",
            "candidate_val_mre_mm": scores["models"]["candidate"]["mre_mm"],
            "served_val_mre_mm": scores["models"]["served"]["mre_mm"],
            "n_val": len(scores["images"]),
            "val_images_scored": scores["images"],
            "candidate_per_image_mm": scores["models"]["candidate"]["per_image"],
            "served_per_image_mm": scores["models"]["served"]["per_image"],
            "tolerance_mm": self.gate.tolerance_mm,
            "min_val_images": self.gate.min_val_images,
            "served_version": served_version,
            "candidate_version": cand_version,
            "skipped": scores["skipped"],
        }
        if publish:
            info = {k: out[k] for k in ("candidate_val_mre_mm", "served_val_mre_mm", "n_val", "served_version")}
            try:
                self.handle.publish(
                    candidate,
                    source="fine-tune",
                    info=info,
                    keep=self.gate.keep_versions,
                    expect_version=served_version,
                )
            except VersionConflictError as e:
                out.update(decision="rejected", reason=f"{e}: not published over a model it was not fine-tuned from")
        if out["decision"] == "rejected":
            out["candidate_file"] = str(self._keep_rejected(candidate, cand_version, out))
        logger.info(f"Gate: {out['decision']} ({out['reason']})")
        return out

    def _keep_rejected(self, candidate: Path, version: str, numbers: dict[str, Any]) -> Path:
        """Copy the rejected candidate to ``rejected/<time>-<version>.pt`` with its numbers (``.json``); keep the
        last :attr:`GatePolicy.keep_rejected`."""
        folder = self.run_dir / "rejected"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{version}"
        dst = folder / f"{stem}.pt"
        shutil.copyfile(candidate, dst)
        (folder / f"{stem}.json").write_text(json.dumps({k: v for k, v in numbers.items() if k != "skipped"}, indent=1))
        old = sorted(folder.glob("*.pt"))
        for p in old[: max(0, len(old) - max(1, self.gate.keep_rejected))]:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
        return dst


def _best_epoch(history: list[dict[str, Any]]) -> int | None:
    scored = [h for h in history if h.get("val_mre_mm") is not None and math.isfinite(h["val_mre_mm"])]
    return int(min(scored, key=lambda h: h["val_mre_mm"])["epoch"]) if scored else None
