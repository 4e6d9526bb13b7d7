"""anatomark: anatomical landmark detection on X-rays, built on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"

from anatomark.errors import AnatomarkError, AnnotationError, ImageReadError, ModelNotFoundError  # noqa: E402

__all__ = ["AnatomarkError", "AnnotationError", "ImageReadError", "ModelNotFoundError", "__version__"]
