"""Readers and writers for X-ray images (with pixel spacing) and landmark annotations."""

from __future__ import annotations

from anatomark.data.annotations import (
    read_labelme,
    read_landmark_csv,
    read_slicer_markups,
    write_labelme,
    write_landmark_csv,
    write_slicer_markups,
)
from anatomark.data.dataset import LandmarkDataset
from anatomark.data.image_io import SUPPORTED_EXTENSIONS, XrayImage, load_image, save_png

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "LandmarkDataset",
    "XrayImage",
    "load_image",
    "read_labelme",
    "read_landmark_csv",
    "read_slicer_markups",
    "save_png",
    "write_labelme",
    "write_landmark_csv",
    "write_slicer_markups",
]
