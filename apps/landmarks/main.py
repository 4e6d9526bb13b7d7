"""anatomark MONAI Label app: automatic anatomical landmarks on 2D X-rays, labels from the viewer, retraining.

Start it with ``python -m monailabel.main start_server --app apps/landmarks --studies <dir> --conf models all``
(see the README's *Server* section). Conf options (``--conf key value``):

- ``models``: ``all`` (every ``<name>.pt`` in the model folder) or comma-separated names (``default`` allowed).
- ``published_model_dir``: where fine-tuned weights are published (default ``<studies>/.anatomark/models``);
  served in preference to the shipped weights, which are never overwritten.
- ``train_epochs`` (10), ``val_fraction`` (0.2): fine-tuning defaults.
- Publication gate (:class:`anatomark.monailabel.train.GatePolicy`): ``gate_tolerance_mm`` (0: a fine-tuned model
  is published when its MRE on the fixed validation labels is at most the served model's + this),
  ``gate_min_val_images`` (1: with fewer scored validation images nothing is published), ``keep_versions`` (5
  published versions kept for ``anatomark served --rollback``), ``keep_rejected`` (3 rejected candidates kept).
- ``POST /train/<model>`` while a training is queued or running answers 409 (one training at a time; the message says
  which one runs and how to stop it: ``DELETE /train/``). Automatic trainings queue at most one behind the running one.
- ``points_tasks`` (true): also serve every model as ``<model>_points``, a ``detection`` task for 3D Slicer's stock
  MONAILabel module (one box ROI per landmark, saved back as final labels; see
  :class:`anatomark.monailabel.infer.LandmarkPointsInferTask`).
- ``auto_train_every_n_labels`` (0 = off): start a fine-tuning after every N saved ``final`` labels. This and
  ``auto_train_interval`` are only the defaults: ``PUT /anatomark/schedule`` (``{"every_n_labels", "interval_hours"}``,
  :mod:`anatomark.monailabel.schedule`) stores a schedule in ``<state>/schedule.json`` that overrides them, also
  after a restart.
- ``auto_train_interval`` (seconds, 0 = off; fractions allowed): on this schedule, fine-tune every model whose latest
  training (automatic or requested, also before a restart) did not read the current final labels; nothing happens
  while the labels stay the same, or while a training of that model is queued or running
  (:class:`anatomark.monailabel.autotrain.AutoTrainer`).
- ``multi_gpu`` (false): default of the train request option ``multi_gpu`` (with ``gpus``, as in MONAI Label: one
  DistributedDataParallel process per GPU when more than one is visible; see ``anatomark.distributed``).
- ``infer_threads`` (``auto``: every core, half of them while a training subprocess runs; or a number; 0 = torch
  default): oversubscribed OpenMP threads made inference ~8x slower beside a training.
- ``label_radius_mm`` (2.0), ``device`` (default ``cuda`` when available), ``auto_update_scoring`` (false).
- ``max_upload_mb`` (200): larger request bodies are refused (413) before they are read; ``allow_model_upload``
  (false): let ``PUT``/``DELETE /model/<name>`` replace or delete weights. Hardening:
  :mod:`anatomark.monailabel.middleware`, :mod:`~anatomark.monailabel.patches` (tied to monailabel 0.8.5) and
  :mod:`~anatomark.monailabel.validation` (README *Hardening/security*).
- With ``--studies http://host/dicom-web`` (DICOMweb, e.g. Orthanc): ``dicom_modalities`` (``DX,CR``; add ``OT`` for
  secondary captures) selects the series served as images, ``dicomweb_cache`` the local folder for downloaded
  instances, labels and the app's training state (default ``~/.cache/anatomark/dicomweb/<hash of url>``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

import anatomark
from anatomark.config import load_yaml
from anatomark.errors import AnatomarkError, ModelNotFoundError
from anatomark.model import read_model_header
from anatomark.monailabel import LandmarkDatastore, LandmarkMRE, LandmarkTaskConfig, LowestConfidence
from anatomark.monailabel.autotrain import AutoTrainer
from anatomark.monailabel.dicomweb import DEFAULT_MODALITIES, LandmarkDICOMwebDatastore, cache_dir, dicomweb_client
from anatomark.monailabel.patches import harden_server, one_training_at_a_time, server_mode
from anatomark.monailabel.train import GatePolicy
from anatomark.monailabel.validation import resolve_infer_image
from anatomark.paths import CONFIG_DIR, model_dir

logger = logging.getLogger(__name__)

EXTRA_EXTENSIONS = ["*.jpeg", "*.bmp", "*.tiff", "*.dcm"]
#: Name suffix of the ``detection`` infer task of each model (3D Slicer's stock module; ``--conf points_tasks false``
#: serves only the segmentation tasks).
POINTS_SUFFIX = "_points"


def _landmark_set_of(path: Path) -> str | None:
    """The landmark set's name of a model file; ``None`` when it cannot be read (reported when the model is loaded)."""
    try:
        return str(read_model_header(path)["landmark_set"]["name"])
    except (ModelNotFoundError, KeyError, TypeError):
        return None


def _select_models(spec: str, landmark_set: str | None = None) -> list[str]:
    """Model names from ``--conf models``: names/aliases, or ``all`` = every shipped model of one landmark set.

    One app serves one landmark set, so ``all`` means all models of ``--conf landmark_set`` (default: the set of the
    ``default`` model in ``configs/app.yaml``, else of the first model file).
    """
    shipped = sorted(p.stem for p in model_dir().glob("*.pt")) if model_dir().is_dir() else []
    aliases = load_yaml(CONFIG_DIR / "app.yaml").get("models") or {}
    if not spec or spec == "all":
        sets = {n: _landmark_set_of(model_dir() / f"{n}.pt") for n in shipped}
        default = aliases.get("default")
        want = landmark_set or (sets.get(default) if default in sets else None) or next(iter(sets.values()), None)
        chosen = [n for n in shipped if sets[n] in (want, None)]
        if shipped and not chosen:
            raise ValueError(
                f"No shipped model for landmark set {want!r}; sets available: {sorted(set(sets.values()) - {None})}"
            )
        others = sorted(n for n in shipped if n not in chosen)
        if others:
            logger.info(
                f"Serving the {want} models {chosen}; not serving {others} (other landmark sets: pick them "
                "with --conf models <name> or --conf landmark_set <set>)"
            )
        return chosen
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        name = aliases.get(name, name)
        if name not in shipped:
            raise ValueError(f"Unknown model {name!r} in --conf models; available: {', '.join(shipped) or '(none)'}")
        if name not in out:
            out.append(name)
    return out


class LandmarkApp(MONAILabelApp):
    """MONAI Label app serving anatomark landmark models (one landmark set per app instance)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_names = _select_models(conf.get("models", "all"), conf.get("landmark_set"))
        local = not studies.startswith(("http://", "https://"))
        state = Path(studies) / ".anatomark" if local else cache_dir(studies, conf) / ".anatomark"
        published = Path(conf.get("published_model_dir") or state / "models")
        self.work_dir = state / "train"
        self.models: dict[str, LandmarkTaskConfig] = {}
        for name in self.model_names:
            c = LandmarkTaskConfig()
            c.init(name, str(model_dir()), conf, None, published_dir=published, work_dir=self.work_dir)
            self.models[name] = c
        if not self.model_names:
            logger.warning(f"No landmark model weights found in {model_dir()}; the app serves no model")
        self.handles = {n: c.handle for n, c in self.models.items()}
        sets = {}
        for n, h in self.handles.items():
            try:
                sets[n] = h.get()[0].landmark_set
            except AnatomarkError as e:
                logger.error(f"Model {n}: {e}")
        if len({s.name for s in sets.values()}) > 1:
            raise ValueError(
                f"Serve models of one landmark set per app; got { ({n: s.name for n, s in sets.items()}) }"
            )
        self.landmark_set = next(iter(sets.values()), None)

        self.auto_train = AutoTrainer.from_conf(self, state, conf)
        self.upload_dir: Path | None = None  # server mode: the only folder /infer reads besides the studies

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="anatomark",
            description="Anatomical landmark detection on 2D X-rays",
            version=anatomark.__version__,
            labels=self.landmark_set.labels if self.landmark_set else None,
        )
        self._auto_update_scoring = bool(strtobool(conf.get("auto_update_scoring", "false")))

    # ------------------------------------------------------------------ tasks
    def init_datastore(self) -> Datastore:
        remote = self.studies.startswith(("http://", "https://"))
        if remote and self.landmark_set is not None and settings.MONAI_LABEL_DATASTORE.lower() in ("", "dicomweb"):
            return self._init_landmark_dicomweb()
        if remote or self.landmark_set is None:
            return super().init_datastore()
        exts = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT) + [e for e in EXTRA_EXTENSIONS]
        return LandmarkDatastore(
            self.studies,
            self.landmark_set,
            on_label_saved=self.auto_train.on_label_saved,
            label_radius_mm=float(self.conf.get("label_radius_mm", 2.0)),
            extensions=list(dict.fromkeys(exts)),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_landmark_dicomweb(self) -> Datastore:
        """DX/CR series of a DICOMweb server (Orthanc ...) as images; labels kept in a local cache folder."""
        url = self.studies.rstrip("/")
        cache = cache_dir(url, self.conf)
        modalities = [m for m in self.conf.get("dicom_modalities", ",".join(DEFAULT_MODALITIES)).split(",") if m]
        user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
        password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
        return LandmarkDICOMwebDatastore(
            dicomweb_client(url, user, password),
            self.landmark_set,
            cache_path=cache,
            modalities=modalities,
            on_label_saved=self.auto_train.on_label_saved,
            label_radius_mm=float(self.conf.get("label_radius_mm", 2.0)),
        )

    def init_infers(self) -> dict[str, Any]:
        infers: dict[str, Any] = {n: c.infer() for n, c in self.models.items()}
        if strtobool(self.conf.get("points_tasks", "true")):
            infers.update({f"{n}{POINTS_SUFFIX}": c.points_infer() for n, c in self.models.items()})
        return infers

    def init_trainers(self) -> dict[str, Any]:
        gate = GatePolicy.from_conf(self.conf)
        trainers = {}
        for n, c in self.models.items():
            trainers[n] = c.trainer()
            trainers[n].gate = gate
        return trainers

    def init_strategies(self) -> dict[str, Any]:
        out: dict[str, Any] = {"random": Random(), "first": First()}
        if self.handles:
            out = {"lowest_confidence": LowestConfidence(self.handles), **out}
        return out

    def init_scoring_methods(self) -> dict[str, Any]:
        return {"landmark_mre": LandmarkMRE()} if self.handles else {}

    def info(self) -> dict[str, Any]:
        meta = super().info()
        ls = self.landmark_set
        meta["anatomark"] = {
            "landmark_set": self.landmark_set.name if self.landmark_set else None,
            **self.auto_train.info(),  # auto_train_every_n_labels, auto_train_interval, schedule, auto_train_log
            "published": {n: str(h.published_path) for n, h in self.handles.items()},
            # the version served now (content hash of the weights file), known before the first /infer
            "served": {n: h.current_version() for n, h in self.handles.items()},
            # kept published versions (oldest first, the last one served); roll back with `anatomark served`
            "versions": {n: h.versions() for n, h in self.handles.items()},
            # for viewers (the OHIF extension): short label and colour of every landmark, in label-value order
            "landmarks": [
                {"index": k, "name": n, "short": s, "color": c}
                for k, (n, s, c) in enumerate(zip(ls.names, ls.shorts, ls.colors), start=1)
            ]
            if ls
            else [],
        }
        return meta

    # ------------------------------------------------------------------ requests: user errors -> 4xx
    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"Unknown model {model!r}; available: {', '.join(self._infers)}"
            )
        timeout = request.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise HTTPException(status_code=422, detail="'timeout' must be a positive number of seconds")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(
                status_code=400, detail="Give ?image=<id> of the datastore or upload the X-ray as form field 'file'"
            )
        ds = datastore if datastore else self.datastore()
        sessions = self.sessions()
        resolved = resolve_infer_image(image, ds, self.upload_dir, sessions.store_path if sessions else None)
        if resolved is None:
            raise HTTPException(status_code=404, detail=f"Image {image!r} is not in the datastore")
        if resolved != image:
            request = {**request, "image": resolved}
        try:
            return super().infer(request, datastore)
        except AnatomarkError as e:
            detail = str(e)
            if self.upload_dir is not None and os.path.isabs(resolved):  # not the server's temp name of an upload
                detail = detail.replace(os.path.basename(resolved), "(uploaded file)")
            raise HTTPException(status_code=422, detail=detail) from e

    def scoring(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        method = request.get("method")
        if method not in self._scoring_methods:
            raise HTTPException(
                status_code=404,
                detail=f"Unknown scoring method {method!r}; available: {', '.join(self._scoring_methods)}",
            )
        return super().scoring(request, datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise HTTPException(
                status_code=404, detail=f"Unknown strategy {strategy!r}; available: {', '.join(self._strategies)}"
            )
        try:
            return super().next_sample(request)
        except AnatomarkError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    def bundle_path(self, model: str | None) -> None:
        # MONAI Label calls this (in the server process) before starting any background train/infer task: the one
        # place to refuse an unknown model with a 404 instead of a 200 followed by a failing subprocess.
        if model and model not in self._trainers and model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"Unknown model {model!r}; available: {', '.join(self._trainers)}"
            )
        return None

    # ------------------------------------------------------------------ server start
    def on_init_complete(self) -> None:
        super().on_init_complete()
        self.upload_dir = harden_server(self)
        if server_mode(self):
            one_training_at_a_time()
            self.auto_train.serve()
