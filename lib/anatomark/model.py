"""A trained landmark model: network + recipe + landmark set, saved as one self-contained ``.pt`` file.

Use :func:`load_model` with a weights path or a model name (``default`` = the shipped model, see
``configs/app.yaml``) and :meth:`LandmarkModel.predict` on an :class:`~anatomark.data.XrayImage`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anatomark.config import LandmarkSet, load_yaml
from anatomark.data.image_io import XrayImage, load_image
from anatomark.data.points_json import landmark_entries
from anatomark.errors import ModelNotFoundError
from anatomark.family import get_family
from anatomark.metrics import radial_errors
from anatomark.networks import InferenceCopy
from anatomark.paths import CONFIG_DIR, atomic_write, model_dir
from anatomark.quality import QualityModel
from anatomark.recipe import DecodeConfig, InputConfig, kind_of
from anatomark.shape import ShapePrior
from anatomark.transforms import functional as Fn
from anatomark.transforms.functional import scale_intensity

MODEL_FORMAT = "anatomark-model/1"


def to_model_input(scaled: np.ndarray) -> torch.Tensor:
    """``(H, W)`` [0, 1] image -> ``(1, 1, H, W)`` z-scored tensor (the network's input convention)."""
    t = torch.as_tensor(np.asarray(scaled, dtype=np.float32))
    t = (t - t.mean()) / t.std().clamp_min(1e-6)
    return t[None, None]


def prepare_image(image: XrayImage, size_hw: tuple[int, int]) -> np.ndarray:
    """Scale intensities to [0, 1] and resize to the model grid: ``(H, W)`` -> ``size_hw``."""
    return Fn.resize_image(scale_intensity(image.array), size_hw)


@dataclass
class Prediction:
    """Landmarks found on one image.

    Attributes:
        points: ``(K, 2)`` (x, y) in original pixels.
        confidence: ``(K,)`` in [0, 1]: probability mass the model puts within ``decode.radius`` of each point.
        spacing: ``(sx, sy)`` mm/px used for ``points_mm``.
        names: landmark names in order.
        timings: seconds per stage.
        replaced: ``(K,)`` bool, points the shape prior replaced (``None`` without a prior).
        coarse_points: ``(K, 2)`` (x, y) original pixels of the first stage of a multi-stage model (``None`` else).
        spread_px: ``(K,)`` expected distance (original pixels, mean of x and y scale) between the point and a draw
            from the model's probability map of that landmark: the map's own spread (``None`` when not known).
    """

    points: np.ndarray
    confidence: np.ndarray
    spacing: tuple[float, float]
    names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    replaced: np.ndarray | None = None
    coarse_points: np.ndarray | None = None
    spread_px: np.ndarray | None = None

    @property
    def points_mm(self) -> np.ndarray:
        return self.points * np.asarray(self.spacing)

    def to_list(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per landmark (``shape_prior_replaced`` only when the model has a shape prior; the one
        points-JSON writer, :func:`anatomark.data.points_json.landmark_entries`)."""
        replaced = None if self.replaced is None else [bool(r) for r in self.replaced]
        return landmark_entries(self.points, self.names, self.spacing, self.confidence, shape_prior_replaced=replaced)


class LandmarkModel:
    """Network + recipe + landmark set, ready to predict.

    Args:
        network: the torch module (eval mode is set here).
        recipe: the model recipe dict (``input.size_hw``, ``decode`` ...).
        landmark_set: the set the channels follow.
        info: training provenance (epochs, validation MRE, commit ...).
    """

    def __init__(
        self, network: torch.nn.Module, recipe: dict[str, Any], landmark_set: LandmarkSet, info: dict | None = None
    ):
        self.network = network.eval()
        self.recipe = recipe
        self.landmark_set = landmark_set
        self.info = info or {}
        inp = InputConfig.of(recipe)
        self.size_hw = tuple(int(s) for s in inp.size_hw)
        self.decode_cfg = DecodeConfig.of(recipe)
        self.decode_method = self.decode_cfg.method
        self.decode_radius = int(self.decode_cfg.radius)
        # pad an image of another aspect ratio to the grid's instead of stretching it (``input.keep_aspect``): only
        # for models trained on images of the grid's aspect (ISBI), for which it changes nothing
        self.keep_aspect = bool(inp.keep_aspect)
        self._runner = InferenceCopy(str(inp.precision))
        self.path: str | None = None
        self.shape_prior: Any = None  # anatomark.shape.ShapePrior, applied by predict() when the model file has one
        self.quality: Any = None  # anatomark.quality.QualityModel, used by anatomark.inference (anatomark calibrate)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.recipe.get("name", "model"))

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> LandmarkModel:
        self.network.to(device)
        return self

    @property
    def precision(self) -> str:
        """What the network runs in at inference (``input.precision``: ``float32``, ``bfloat16`` or ``auto``)."""
        return self._runner.precision

    def set_precision(self, precision: str) -> None:
        """Run the network in ``precision`` from now on, and keep that in the recipe (so in the model file)."""
        self._runner = InferenceCopy(precision)
        self.recipe.setdefault("input", {})["precision"] = precision

    def run_network(self, x: torch.Tensor) -> Any:
        """The network's output for a float32 ``(N, C, H, W)`` input, in :attr:`precision` (outputs in that dtype)."""
        with self._lock:
            net, dtype = self._runner.get(self.network, x.device)
            return net(x.to(dtype))

    @torch.no_grad()
    def grid_probabilities(self, scaled: np.ndarray) -> torch.Tensor:
        """``(K, H, W)`` per-landmark spatial softmax of the network on a prepared ``size_hw`` image."""
        x = to_model_input(scaled).to(self.device)
        logits = self.run_network(x)[0]
        k = logits.shape[0]
        return torch.softmax(logits.reshape(k, -1).float(), dim=-1).reshape(logits.shape)

    def predict_grid(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predict on a prepared ``size_hw`` image -> ``(K, 2)`` points in the model grid and ``(K,)`` confidence."""
        pts, _, mass = Fn.heatmaps_to_points(self.grid_probabilities(scaled), self.decode_method, self.decode_radius)
        return pts, np.clip(mass, 0.0, 1.0)

    def predict_grid_spread(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`predict_grid`, plus the ``(K,)`` spread of each probability map around its point (grid px)."""
        prob = self.grid_probabilities(scaled)
        pts, _, mass = Fn.heatmaps_to_points(prob, self.decode_method, self.decode_radius)
        return pts, np.clip(mass, 0.0, 1.0), Fn.heatmap_spread(prob, pts)

    def to_grid(self, scaled: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """``(H, W)`` [0, 1] image -> the ``size_hw`` model input, and the letterbox frame (``None``: stretched)."""
        if self.keep_aspect:
            return Fn.letterbox_image(scaled, self.size_hw)
        return Fn.resize_image(scaled, self.size_hw), None

    def from_grid(self, points: np.ndarray, frame: tuple[int, int, int, int] | None, shape_hw) -> np.ndarray:  # noqa: ANN001
        """Points of the model grid -> the original image of ``shape_hw`` (see :meth:`to_grid`)."""
        if frame is None:
            return Fn.resize_points(points, self.size_hw, shape_hw)
        return Fn.letterbox_points_back(points, frame, self.size_hw)

    def predict(self, image: XrayImage) -> Prediction:
        """Find the landmarks on ``image``; points come back in its original pixels.

        The model family's own prediction (:meth:`_predict`), then the shape prior when the model file has one
        (outlying points replaced by the fitted training shape; ``timings["shape_prior"]``, ``replaced`` mask).
        """
        pred = self._predict(image)
        if self.shape_prior is not None:
            t0 = time.perf_counter()
            h, w = image.shape
            pred.points, pred.replaced = self.shape_prior.apply(pred.points, (w, h))
            pred.timings["shape_prior"] = time.perf_counter() - t0
        return pred

    def predict_coarse(self, image: XrayImage) -> Prediction:
        """A cheaper first look: the first stage only for multi-stage models, else :meth:`predict`."""
        return self.predict(image)

    def extra_networks(self) -> dict[str, torch.nn.Module]:
        """Modules saved next to the main network (``extra_state_dicts`` of the model file)."""
        out: dict[str, torch.nn.Module] = {}
        if self.shape_prior is not None:
            out["shape_prior"] = self.shape_prior
        if self.quality is not None:
            out["quality"] = self.quality
        return out

    def _predict(self, image: XrayImage) -> Prediction:
        t0 = time.perf_counter()
        scaled, frame = self.to_grid(scale_intensity(image.array))
        t1 = time.perf_counter()
        pts, conf, spread = self.predict_grid_spread(scaled)
        t2 = time.perf_counter()
        src = image.shape if frame is None else frame[2:]
        zoom = 0.5 * (src[0] / self.size_hw[0] + src[1] / self.size_hw[1])
        pts = self.from_grid(pts, frame, image.shape)
        return Prediction(
            points=pts,
            confidence=conf,
            spacing=image.spacing,
            names=list(self.landmark_set.names),
            timings={"preprocess": t1 - t0, "network": t2 - t1},
            spread_px=spread * zoom,
        )

    def save(self, path: str | Path, half: bool = True) -> Path:
        """Write a self-contained model file atomically (fp16 weights by default: half the size, same accuracy)."""
        return save_model_file(
            path, self.network, self.recipe, self.landmark_set, self.info, half=half, extra=self.extra_networks()
        )


@dataclass
class ItemPredictions:
    """Predictions of one model on dataset items (see :func:`predict_items`).

    Attributes:
        ids: item ids in order.
        points: ``(N, K, 2)`` predicted (x, y) in original pixels.
        truth: ``(N, K, 2)`` annotated (x, y) (NaN = not annotated).
        spacing: ``(N, 2)`` mm/px used for each image.
        seconds: ``(N,)`` wall time per image, reading the file included.
    """

    ids: list[str]
    points: np.ndarray
    truth: np.ndarray
    spacing: np.ndarray
    seconds: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        """``(N, K)`` radial errors in mm (see :func:`anatomark.metrics.radial_errors`)."""
        return radial_errors(self.points, self.truth, self.spacing)


def predict_items(
    model: LandmarkModel, items: list[dict[str, Any]], progress: bool = True, desc: str | None = None
) -> ItemPredictions:
    """Load every item's image (its spacing, else the landmark set's default) and predict, with a progress bar.

    Args:
        model: the model.
        items: ``{"image", "landmarks", "spacing", "id"}`` dicts, e.g. :class:`anatomark.data.LandmarkDataset` items.
        progress: show a progress bar.
        desc: progress-bar label.
    """
    from tqdm.auto import tqdm

    ids, pts, gts, sps, secs = [], [], [], [], []
    for it in tqdm(items, desc=desc or f"{model.name}", unit="img", disable=not progress):
        t0 = time.perf_counter()
        img = load_image(it["image"], spacing=it.get("spacing"), default_spacing=model.landmark_set.default_spacing_mm)
        pts.append(model.predict(img).points)
        secs.append(time.perf_counter() - t0)
        gts.append(np.asarray(it["landmarks"], dtype=np.float64))
        sps.append(img.spacing)
        ids.append(it.get("id", Path(it["image"]).name))
    return ItemPredictions(ids, np.stack(pts), np.stack(gts), np.asarray(sps, dtype=np.float64), np.asarray(secs))


def save_model_file(
    path: str | Path,
    network: torch.nn.Module,
    recipe: dict[str, Any],
    landmark_set: LandmarkSet,
    info: dict | None = None,
    half: bool = True,
    extra: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write a self-contained model file atomically: recipe, landmark set, weights (+ ``extra`` named networks)."""
    path = Path(path)

    def pack(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        # float32 weights -> fp16; float64 buffers (the shape prior's PCA basis) -> float32 so they stay exact enough
        return {
            k: (v.half() if half and v.dtype == torch.float32 else v.float() if v.dtype == torch.float64 else v).cpu()
            for k, v in net.state_dict().items()
        }

    state = pack(network)
    payload = {
        "format": MODEL_FORMAT,
        "recipe": recipe,
        "landmark_set": landmark_set.to_dict(),
        "state_dict": state,
        "extra_state_dicts": {name: pack(net) for name, net in (extra or {}).items()},
        "info": info or {},
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def available_models() -> dict[str, Path]:
    """Names usable with ``--model``: ``default`` plus every ``<name>.pt`` in the model folder."""
    d = model_dir()
    out = {p.stem: p for p in sorted(d.glob("*.pt"))} if d.is_dir() else {}
    app = load_yaml(CONFIG_DIR / "app.yaml")
    for alias, target in (app.get("models") or {}).items():
        if target in out:
            out[alias] = out[target]
    return out


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A weights path, or a model name -> its file. ``None`` means ``default``."""
    name = str(name_or_path) if name_or_path is not None else "default"
    p = Path(name)
    if p.suffix == ".pt" or p.exists():
        if not p.is_file():
            raise ModelNotFoundError(f"Model weights file not found: {p}")
        return p
    models = available_models()
    if name not in models:
        raise ModelNotFoundError(
            f"Unknown model {name!r}; available: {', '.join(sorted(models)) or '(none shipped)'}; "
            "or pass a path to a .pt file written by 'anatomark train'"
        )
    return models[name]


def float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as stored (fp16 weights) -> float32 floating-point tensors, others unchanged."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_model_payload(path: str | Path) -> dict[str, Any]:
    """The dictionary stored in an anatomark model file (weights included); clear errors for anything else."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ModelNotFoundError(f"{path} is not a readable anatomark model file ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelNotFoundError(f"{path} is not an anatomark model file (expected format {MODEL_FORMAT})")
    return payload


def read_model_header(name_or_path: str | Path) -> dict[str, Any]:
    """What a model file says about itself, without building its networks.

    Args:
        name_or_path: a model name (``default``, a shipped name) or a ``.pt`` path.

    Returns:
        ``{"path", "recipe", "landmark_set" (dict), "info"}``.

    Raises:
        ModelNotFoundError: unknown name, missing or unreadable file, or not an anatomark model file.
    """
    path = resolve_model_path(name_or_path)
    payload = read_model_payload(path)
    return {
        "path": str(path),
        "recipe": payload["recipe"],
        "landmark_set": payload["landmark_set"],
        "info": payload.get("info") or {},
    }


def restore_shape_prior(state: dict[str, torch.Tensor], n_landmarks: int, recipe: dict[str, Any]) -> ShapePrior:
    """The :class:`~anatomark.shape.ShapePrior` stored as ``state`` in a model file (settings: ``recipe.shape_prior``)."""
    prior = ShapePrior(n_landmarks, **recipe.get("shape_prior", {}))
    prior.load_state_dict({k: v.double() for k, v in state.items()})
    return prior


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> LandmarkModel:
    """Load a model by name (``default``, a shipped name) or from a ``.pt`` file."""
    path = resolve_model_path(name_or_path)
    payload = read_model_payload(path)
    ls = LandmarkSet.from_dict(payload["landmark_set"])
    recipe = payload["recipe"]
    extras = dict(payload.get("extra_state_dicts") or {})
    states = {"network": float_state(payload["state_dict"])}
    states.update({k: float_state(v) for k, v in extras.items() if k not in ("shape_prior", "quality")})
    model = get_family(kind_of(recipe)).load(recipe, ls, states, payload.get("info") or {})
    if "shape_prior" in extras:
        model.shape_prior = restore_shape_prior(extras["shape_prior"], len(ls), recipe)
    if "quality" in extras:
        state = extras["quality"]
        model.quality = QualityModel(len(ls), modes=int(state["components"].shape[0]))
        model.quality.load_state_dict({k: v.double() for k, v in state.items()})
    model.path = str(path)
    return model.to(device)
