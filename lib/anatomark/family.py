"""Model families as one-way plug-ins: the :class:`Family` protocol and the registry of families.

A model family (a recipe ``kind``: ``heatmap``, ``cascade``, ``unet_seg`` ...) is one module that implements
:class:`Family` and calls :func:`register_family` when it is imported. The core (:mod:`anatomark.model`,
:mod:`anatomark.training`, :mod:`anatomark.config`) never imports a family module: it asks :func:`get_family`,
which imports the module that provides a kind the first time the kind is asked for. Built-in families are listed in
:data:`BUILTIN`; other packages add theirs through the ``anatomark.families`` entry-point group
(``my_kind = my_package.my_family``: the module registers its families when imported).

A new family is one file plus a recipe::

    class MyFamily:
        kind = "my_kind"
        required_sections = ("landmark_set", "network", "input", "train")
        def load(self, recipe, landmark_set, states, info): ...      # model file -> LandmarkModel
        def train(self, recipe, landmark_set, items, out_dir, run): ...  # -> result dict, model file written once

    register_family(MyFamily())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from anatomark.errors import AnatomarkError

# Type names in the protocol below: anatomark.config.LandmarkSet and anatomark.model.LandmarkModel (written as Any
# here because this registry sits below both in the import order).
LandmarkSet = Any
LandmarkModel = Any

#: Kind -> module providing it, for the families shipped with anatomark.
BUILTIN: dict[str, str] = {
    "heatmap": "anatomark.families.heatmap",
    "local": "anatomark.families.cascade",
    "cascade": "anatomark.families.cascade",
    "unet_seg": "anatomark.families.zoo",
    "fpn_seg": "anatomark.families.zoo",
    "appearance_context": "anatomark.families.zoo",
    "seg_regression": "anatomark.families.zoo",
    "farnet": "anatomark.families.zoo",
    "refined": "anatomark.families.refined",
}
ENTRY_POINT_GROUP = "anatomark.families"

_REGISTRY: dict[str, Family] = {}


@dataclass
class TrainRun:
    """How one training runs (the same for every family; see :func:`anatomark.training.train`).

    Attributes:
        resume: continue from the checkpoints (``last.pt``) in the output folder.
        init_weights: start from this model file (fine-tuning), unless resuming.
        epochs: override ``train.epochs`` of the recipe.
        device: ``cpu``/``cuda``; ``None``: CUDA when available.
        progress: progress bars and one line per epoch.
        val_items: explicit validation items; ``None``: the recipe's split of the training items.
        on_epoch: called with each epoch's record (plus ``total_epochs`` and ``out_dir``).
        info: provenance stored in the model file.
    """

    resume: bool = False
    init_weights: str | Path | None = None
    epochs: int | None = None
    device: str | None = None
    progress: bool = True
    val_items: Sequence[dict[str, Any]] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    info: dict[str, Any] | None = None


@runtime_checkable
class Family(Protocol):
    """What a model family provides.

    Attributes:
        kind: the recipe ``kind`` it handles.
        required_sections: top-level recipe sections a recipe of this kind must have.
    """

    kind: str
    required_sections: tuple[str, ...]

    def load(
        self, recipe: dict[str, Any], landmark_set: LandmarkSet, states: dict[str, Any], info: dict[str, Any]
    ) -> LandmarkModel:
        """Build the model of a model file: ``states`` = ``{"network": state_dict, **extra_state_dicts}``."""
        ...

    def train(
        self,
        recipe: dict[str, Any],
        landmark_set: LandmarkSet,
        items: Sequence[dict[str, Any]],
        out_dir: Path,
        run: TrainRun,
    ) -> dict[str, Any]:
        """Train and write ``out_dir/model.pt`` once -> ``{"best_val_mre_mm", "epochs", "model_path", "history",
        "train_seconds"}``."""
        ...


def register_family(family: Family) -> Family:
    """Make ``family`` available under ``family.kind`` (a later registration of the same kind replaces it)."""
    if not isinstance(family, Family):
        raise TypeError(f"{family!r} does not implement anatomark.family.Family (kind, required_sections, load, train)")
    _REGISTRY[family.kind] = family
    return family


def _plugin_modules() -> dict[str, str]:
    """Kind -> module of the installed plug-ins (entry points), then the built-in ones (they win on a clash)."""
    try:
        found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # noqa: BLE001 - broken metadata of another package must not break anatomark
        found = {}
    return {**found, **BUILTIN}


def family_kinds() -> list[str]:
    """Every kind that can be loaded: built-in, installed plug-ins and families registered at run time."""
    return sorted(set(_plugin_modules()) | set(_REGISTRY))


def get_family(kind: str) -> Family:
    """The family of a recipe ``kind``, importing the module that provides it on first use.

    Raises:
        AnatomarkError: unknown kind (the message lists the known ones).
    """
    if kind not in _REGISTRY:
        module = _plugin_modules().get(kind)
        if module is None:
            raise AnatomarkError(f"Unknown model kind {kind!r}; known kinds: {', '.join(family_kinds())}")
        importlib.import_module(module.split(":")[0])
        if kind not in _REGISTRY:
            raise AnatomarkError(f"Module {module} was expected to register the model kind {kind!r} but did not")
    return _REGISTRY[kind]
