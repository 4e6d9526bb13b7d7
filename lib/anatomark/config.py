"""YAML configuration: landmark sets (model recipes: :mod:`anatomark.recipe`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anatomark.errors import AnatomarkError
from anatomark.paths import CONFIG_DIR


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; raise a clear error when the file is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise AnatomarkError(f"Configuration file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise AnatomarkError(f"Configuration file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise AnatomarkError(f"Configuration file {path} must hold a mapping at top level")
    return data


@dataclass
class LandmarkSet:
    """An ordered set of named landmarks.

    Args:
        name: identifier of the set (file stem of its YAML).
        names: landmark names in model channel order; landmark ``k`` (1-based) is ``names[k - 1]``.
        descriptions: one short description per landmark.
        colors: one ``#rrggbb`` colour per landmark.
        shorts: short labels (e.g. ``S``, ``N``) for overlays.
        default_spacing_mm: (x, y) pixel spacing used when an image carries none.
        description: what the set is for.
    """

    name: str
    names: list[str]
    descriptions: list[str] = field(default_factory=list)
    colors: list[str] = field(default_factory=list)
    shorts: list[str] = field(default_factory=list)
    default_spacing_mm: tuple[float, float] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise AnatomarkError(f"Landmark set {self.name!r} has duplicate landmark names")
        n = len(self.names)
        self.descriptions = list(self.descriptions) or [""] * n
        self.shorts = list(self.shorts) or list(self.names)
        self.colors = list(self.colors) or [_default_color(i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.names)

    def indices(self, names: Sequence[str], what: str = "landmark") -> list[int]:
        """The indices of ``names`` in this set, in the order given.

        Raises:
            AnatomarkError: a name not in the set (``what`` says where the names came from).
        """
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise AnatomarkError(f"{what} names {unknown} not in landmark set {self.name!r} ({', '.join(self.names)})")
        return [self.names.index(n) for n in names]

    @property
    def labels(self) -> dict[str, int]:
        """Mapping landmark name -> label value ``k`` (1..K), as MONAI Label expects."""
        return {n: i + 1 for i, n in enumerate(self.names)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "default_spacing_mm": list(self.default_spacing_mm) if self.default_spacing_mm else None,
            "landmarks": [
                {"name": n, "short": s, "description": d, "color": c}
                for n, s, d, c in zip(self.names, self.shorts, self.descriptions, self.colors)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> LandmarkSet:
        items = data.get("landmarks")
        if not isinstance(items, list) or not items:
            raise AnatomarkError(f"Landmark set {name or data.get('name')!r} needs a non-empty 'landmarks' list")
        items = [{"name": i} if isinstance(i, str) else i for i in items]
        sp = data.get("default_spacing_mm")
        if sp is not None:
            sp = (float(sp[0]), float(sp[1])) if isinstance(sp, (list, tuple)) else (float(sp), float(sp))
        return cls(
            name=data.get("name", name or "custom"),
            names=[str(i["name"]) for i in items],
            descriptions=[str(i.get("description", "")) for i in items],
            colors=[str(i.get("color", _default_color(k))) for k, i in enumerate(items)],
            shorts=[str(i.get("short", i["name"])) for i in items],
            default_spacing_mm=sp,
            description=str(data.get("description", "")),
        )


def _default_color(i: int) -> str:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def available_landmark_sets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "landmarks").glob("*.yaml"))


def load_landmark_set(name_or_path: str | Path) -> LandmarkSet:
    """Load a landmark set by name (``configs/landmarks/<name>.yaml``) or from a YAML path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CONFIG_DIR / "landmarks" / f"{name_or_path}.yaml"
        if not p.is_file():
            raise AnatomarkError(
                f"Unknown landmark set {name_or_path!r}; available: {', '.join(available_landmark_sets())}"
            )
    return LandmarkSet.from_dict(load_yaml(p), name=p.stem)
