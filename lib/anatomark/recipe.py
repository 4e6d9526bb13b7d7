"""Typed model recipes: each section of a recipe YAML (``configs/models/*.yaml``) parsed once, defaults in one place.

A recipe stays a plain dictionary where it is stored (model files, ``last.pt``, the MONAI Label train task copies it
through JSON); code reads it through these dataclasses (``TrainConfig.of(recipe)``, :func:`parse`), so a default
(learning rate, decode radius ...) is written here and nowhere else, and a misspelt key is an error that names it.
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from anatomark.config import load_yaml
from anatomark.errors import AnatomarkError
from anatomark.family import family_kinds, get_family
from anatomark.paths import CONFIG_DIR

T = TypeVar("T", bound="Section")


@dataclass(frozen=True)
class Section:
    """Base of a recipe section: :meth:`from_dict` checks the keys, converts tuples and fills the defaults."""

    #: the recipe key the section is read from (``None``: the recipe itself)
    KEY = ""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
        """Parse one section; unknown keys raise :class:`~anatomark.errors.AnatomarkError` naming them."""
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise AnatomarkError(
                f"Unknown key(s) {', '.join(unknown)} in the recipe section {where or cls.KEY!r}; "
                f"known: {', '.join(sorted(names))}"
            )
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        absent = [n for n in missing if n not in data]
        if absent:
            raise AnatomarkError(f"The recipe section {where or cls.KEY!r} lacks {', '.join(absent)}")
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                v = data[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    @classmethod
    def of(cls: type[T], recipe: dict[str, Any]) -> T:
        """The section :attr:`KEY` of a whole recipe dictionary."""
        return cls.from_dict(recipe.get(cls.KEY), cls.KEY)


@dataclass(frozen=True)
class InputConfig(Section):
    """``input``: the model grid.

    Attributes:
        size_hw: ``(H, W)`` grid every image is resized (or letterboxed) to.
        keep_aspect: pad an image of another aspect ratio instead of stretching it.
        normalize: input normalisation (``zscore``, the only one).
        precision: what the network runs in at inference: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where the
            hardware computes it natively, see :func:`anatomark.networks.inference_dtype`). Training is float32.
    """

    KEY = "input"
    size_hw: tuple[int, int] = (0, 0)
    keep_aspect: bool = False
    normalize: str = "zscore"
    precision: str = "float32"


@dataclass(frozen=True)
class TargetConfig(Section):
    """``target``: how points become training targets.

    Attributes:
        kind: ``heatmap`` (Gaussian) or ``mask`` (disks/squares).
        sigma: Gaussian sigma in model-grid px.
        radius: disk radius / square half-side in model-grid px.
        shape: ``disk`` or ``square``.
    """

    KEY = "target"
    kind: str = "heatmap"
    sigma: float = 2.0
    radius: float = 3.0
    shape: str = "disk"


@dataclass(frozen=True)
class DecodeConfig(Section):
    """``decode``: how network outputs become points.

    Attributes:
        method: heatmaps: ``local_mean`` (argmax + probability-weighted mean in a window) or ``argmax``.
        radius: window radius of ``local_mean`` (px); also the radius of the confidence mass.
        threshold: masks: foreground threshold on the sigmoid.
        missed: masks: an empty mask falls back to the ``argmax`` or gives ``nan``.
        region: masks with several regions: the ``largest`` or the one holding the ``peak``.
        weighted: masks: probability-weighted centroid of the region.
        source: masks: where the points come from: ``mask`` (a region of the sigmoid masks, above) or ``softmax``
            (the probability-weighted centroid, ``method``/``radius``, of each channel's spatial softmax: the logits
            as one distribution over the image, so a second blob never moves the point); regions are still counted.
            Heatmap zoo families: ``softmax`` decodes the spatial softmax of the output (logits trained with
            ``spatial_softmax_ce``), anything else the output itself as a heatmap (trained with MSE / EWC).
    """

    KEY = "decode"
    method: str = "local_mean"
    radius: int = 3
    threshold: float = 0.5
    missed: str = "argmax"
    region: str = "largest"
    weighted: bool = False
    source: str = "mask"


@dataclass(frozen=True)
class AugmentConfig(Section):
    """``augment``: random transforms applied with the points.

    Attributes:
        prob: probability of the random affine.
        rotate_deg: maximum rotation (degrees).
        scale: ``(min, max)`` zoom.
        translate_px: maximum shift (model-grid px).
        intensity_gamma: ``(min, max)`` gamma drawn log-uniformly.
        noise_prob: refiner patches only (``kind: cascade`` / ``local``): probability of additive Gaussian noise
            (MONAI ``RandGaussianNoise`` on the [0, 1] patch, its std drawn uniformly in ``[0, noise_std]``).
        noise_std: ... the largest noise std.
        blur_prob: refiner patches only: probability of a Gaussian blur (MONAI ``RandGaussianSmooth``).
        blur_sigma: ... its ``(min, max)`` sigma in patch px.
    """

    KEY = "augment"
    prob: float = 0.0
    rotate_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate_px: float = 0.0
    intensity_gamma: tuple[float, float] = (1.0, 1.0)
    noise_prob: float = 0.0
    noise_std: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)

    @property
    def patch_intensity(self) -> bool:
        """Whether the noise or blur augmentation (refiner patches only) is on."""
        return (self.noise_prob > 0 and self.noise_std > 0) or self.blur_prob > 0


@dataclass(frozen=True)
class TrainConfig(Section):
    """``train``: the optimisation (:func:`anatomark.training.fit`).

    Attributes:
        epochs: epochs of a training from scratch.
        batch_size: images (or patches) per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        scheduler: ``cosine`` (5 % linear warm-up, cosine to 1 %), ``plateau`` (ReduceLROnPlateau on validation
            MRE) or ``constant``.
        plateau_patience: epochs without improvement before the plateau scheduler cuts the rate.
        plateau_factor: its factor.
        val_fraction: fraction of the training items held out for validation (:func:`anatomark.training.recipe_split`).
        val_seed: seed of that split (independent of ``seed``).
        folds: k-fold cross-validation instead (k >= 2; 0: off): the same seeded permutation of the items cut into
            ``folds`` near-equal parts; part ``fold`` is the validation split (``val_fraction`` is then ignored).
        fold: which part (0 .. folds - 1).
        seed: weights, augmentation and sampling seed.
        num_threads: torch threads (``None``: leave the setting alone).
        patches_per_image: local refiner: patches drawn per image and epoch.
        init_modules: a training from scratch starts these submodules of the network from a trained model's network
            (submodule name -> shipped model name or ``.pt`` path, e.g. ``{unet: isbi2015_unet_seg}``); the model
            must have been trained on the same training split, or its validation images leak into the start.
    """

    KEY = "train"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    val_fraction: float = 0.1
    val_seed: int = 0
    folds: int = 0
    fold: int = 0
    seed: int = 0
    num_threads: int | None = None
    patches_per_image: int = 8
    init_modules: dict[str, str] | None = None


@dataclass(frozen=True)
class LocalConfig(Section):
    """``local``: the fine-resolution refiner of a cascade (:mod:`anatomark.families.cascade`).

    Attributes:
        patch_size: patch side (px, divisible by 16).
        spacing_mm: isotropic spacing of the fine image (required by the refiner and its training).
        network: network of the refiner (:func:`anatomark.networks.build_network` arguments).
        sigma: Gaussian sigma of the patch targets (px).
        offset_sigma_mm: training patches are centred this far (normal sigma) from the truth.
        max_offset_mm: ... at most this far.
        iterations: refinement passes (re-centre, look again).
        context: zoom-out factors of extra input channels.
        precision: ``float32``, ``bfloat16`` or ``float16`` inference.
        decode: decoding of the patch heatmaps.
        val_from_model: validate from this stage-1 model's predictions (a path) instead of offsets of the truth.
        focus: landmark names a specialist refiner is trained for: its training patches are centred on these only
            (every landmark inside a patch is still a target) and its validation MRE (the best epoch) is theirs.
            Empty: all landmarks.
        start_prior_mm: inference only: weigh each probability map with a Gaussian of this sigma (mm) around the
            point the patch is centred on before decoding, so a refiner does not jump to a stronger but distant
            peak; confidence and spread still read the network's own map. ``None``: off.
    """

    KEY = "local"
    patch_size: int
    spacing_mm: float = 0.0
    network: dict[str, Any] = field(default_factory=dict)
    sigma: float = 2.0
    offset_sigma_mm: float = 2.0
    max_offset_mm: float = 6.0
    iterations: int = 1
    context: tuple[int, ...] = ()
    precision: str = "float32"
    decode: dict[str, Any] = field(default_factory=dict)
    val_from_model: str | None = None
    focus: tuple[str, ...] = ()
    start_prior_mm: float | None = None


def loss_options(recipe: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``loss``: ``(name, keyword arguments)``; the default loss is the spatial-softmax cross-entropy."""
    cfg = dict(recipe.get("loss") or {})
    return str(cfg.pop("name", "spatial_softmax_ce")), cfg


def kind_of(recipe: dict[str, Any]) -> str:
    """The recipe's model family (``heatmap`` when not given)."""
    return str(recipe.get("kind", "heatmap"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Load a model recipe by name (``configs/models/<name>.yaml``) or from a YAML path.

    The kind must be a known family (:func:`anatomark.family.family_kinds`) and the recipe must have the sections
    that family requires; ``name`` defaults to the file name.
    """
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / "models" / f"{name_or_path}.yaml"
    recipe = load_yaml(p)
    kind = kind_of(recipe)
    if kind not in family_kinds():
        raise AnatomarkError(f"Model recipe {p}: unknown kind {kind!r}; use {', '.join(family_kinds())}")
    for key in get_family(kind).required_sections:
        if key not in recipe:
            raise AnatomarkError(f"Model recipe {p} lacks the required section {key!r}")
    recipe.setdefault("name", p.stem)
    return copy.deepcopy(recipe)
