"""Exceptions a user can cause. Each carries a message that says what went wrong and what to do."""

from __future__ import annotations


class AnatomarkError(ValueError):
    """Base class for errors caused by user input (bad file, wrong landmark count, unknown model)."""


class ImageReadError(AnatomarkError):
    """An image file cannot be read (missing, truncated, corrupt or unsupported)."""


class AnnotationError(AnatomarkError):
    """An annotation file is malformed or does not match the landmark set."""


class ModelNotFoundError(AnatomarkError):
    """A model name or weights path does not resolve to a usable model."""
