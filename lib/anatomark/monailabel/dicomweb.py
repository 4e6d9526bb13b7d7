"""A DICOMweb datastore for 2D X-rays (DX/CR, optionally secondary capture) in a PACS such as Orthanc.

MONAI Label's own ``DICOMWebDatastore`` lists only the modality of ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER`` (CT by
default, one value), caches the series list for two hours, converts every series to NIfTI (a DX becomes a 1-slice
volume with lost detector spacing) and stores final labels as DICOM SEG through dcmqi, which it downloads from the
internet at start. This datastore instead:

- lists series of each modality in ``modalities`` (default DX and CR; one QIDO query per modality, re-read after
  ``list_ttl`` seconds so new uploads appear);
- uses the series instance UID as the image id (as MONAI Label's OHIF integration does);
- on first use downloads the series' first instance (by InstanceNumber) over WADO-RS and keeps it as
  ``<cache>/<series uid>.dcm``: our loader reads it directly with its ``ImagerPixelSpacing``/``PixelSpacing``;
- stores labels exactly like :class:`LandmarkDatastore` (points validated, label map + exact points in the label info)
  in the local cache folder; training and scoring read them from there. Labels are not written back to the PACS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from anatomark.config import LandmarkSet
from anatomark.monailabel.datastore import LandmarkDatastore

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("DX", "CR")


def dicomweb_client(url: str, username: str = "", password: str = "") -> Any:
    """A ``dicomweb_client`` client for ``url`` (MONAI Label's variant that tolerates Orthanc's content types)."""
    from monailabel.config import settings
    from monailabel.datastore.dicom import DICOMwebClientX

    session = None
    if username and password:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(username, password)
    return DICOMwebClientX(
        url=url.rstrip("/"),
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )


def _value(meta: dict[str, Any], tag: str) -> str:
    v = (meta.get(tag) or {}).get("Value") or [""]
    v = v[0]
    if isinstance(v, dict):  # person name
        v = v.get("Alphabetic", "")
    return str(v)


class LandmarkDICOMwebDatastore(LandmarkDatastore):
    """Images from a DICOMweb server, labels in a local cache folder (see the module docstring).

    Args:
        client: a ``dicomweb_client.DICOMwebClient``.
        landmark_set: the set labels must match.
        cache_path: local folder for downloaded instances and labels.
        modalities: series modalities listed as images.
        list_ttl: seconds the series list is reused before asking the server again.
        **kwargs: passed to :class:`LandmarkDatastore` (``on_label_saved``, ``label_radius_mm``).
    """

    def __init__(
        self,
        client: Any,
        landmark_set: LandmarkSet,
        cache_path: str | Path,
        modalities: tuple[str, ...] | list[str] = DEFAULT_MODALITIES,
        list_ttl: float = 5.0,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self.modalities = tuple(m.strip().upper() for m in modalities if m.strip())
        self.list_ttl = float(list_ttl)
        self._series: dict[str, dict[str, Any]] = {}
        self._listed_at = 0.0
        self._list_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        Path(cache_path).mkdir(parents=True, exist_ok=True)
        logger.info(f"DICOMweb datastore {client.base_url}: modalities {self.modalities}, cache {cache_path}")
        super().__init__(str(cache_path), landmark_set, extensions=["*.dcm"], auto_reload=False, **kwargs)

    def name(self) -> str:
        return f"DICOMweb {self._client.base_url}"

    # ------------------------------------------------------------------ listing
    def _remote_series(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        with self._list_lock:
            if refresh or time.monotonic() - self._listed_at > self.list_ttl:
                series: dict[str, dict[str, Any]] = {}
                for m in self.modalities:
                    for meta in self._client.search_for_series(search_filters={"Modality": m}):
                        uid = _value(meta, "0020000E")
                        if uid and _value(meta, "00080060").upper() in self.modalities:
                            series[uid] = meta
                self._series, self._listed_at = series, time.monotonic()
            return self._series

    def list_images(self) -> list[str]:
        return sorted(self._remote_series())

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        remote = self._remote_series()
        return [i for i in super().get_labeled_images(label_tag, labels) if i in remote]

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = set(super().get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labelled]

    # ------------------------------------------------------------------ images
    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id)
        if uri and os.path.isfile(uri):
            return uri
        meta = self._remote_series().get(image_id) or self._remote_series(refresh=True).get(image_id)
        if meta is None:
            return ""
        with self._fetch_lock:
            uri = super().get_image_uri(image_id)
            if uri and os.path.isfile(uri):
                return uri
            self._download(image_id, meta)
        return super().get_image_uri(image_id)

    def _download(self, series_uid: str, meta: dict[str, Any]) -> None:
        study_uid = _value(meta, "0020000D")
        t0 = time.perf_counter()
        instances = self._client.search_for_instances(study_uid, series_uid)
        if not instances:
            raise FileNotFoundError(f"Series {series_uid} has no instances")
        first = min(instances, key=lambda m: (int(_value(m, "00200013") or 0), _value(m, "00080018")))
        sop_uid = _value(first, "00080018")
        ds: Dataset = self._client.retrieve_instance(study_uid, series_uid, sop_uid)
        info = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
            "SOPInstanceUID": sop_uid,
            "Modality": str(getattr(ds, "Modality", "")),
            "PatientID": str(getattr(ds, "PatientID", "")),
            "n_instances": len(instances),
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{series_uid}.dcm"
            ds.save_as(str(path), write_like_original=False)
            self.add_image(series_uid, str(path), info)
        logger.info(
            f"Fetched {series_uid} ({info['Modality']}, instance {sop_uid}) in {time.perf_counter() - t0:.2f} s"
        )

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        info = super().get_image_info(image_id)
        meta = self._remote_series().get(image_id)
        if meta:
            for key, tag in (("StudyInstanceUID", "0020000D"), ("Modality", "00080060"), ("PatientID", "00100020")):
                info.setdefault(key, _value(meta, tag))
        return info


def cache_dir(url: str, conf: dict[str, str]) -> Path:
    """Local folder of a DICOMweb datastore: ``--conf dicomweb_cache``, else MONAI Label's cache-path settings, else
    ``~/.cache/anatomark/dicomweb/<hash of url>``. The app keeps its training state in ``<cache>/.anatomark``."""
    from monailabel.config import settings

    url = url.rstrip("/")
    return Path(
        conf.get("dicomweb_cache")
        or settings.MONAI_LABEL_DATASTORE_CACHE_PATH
        or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH
        or Path.home() / ".cache" / "anatomark" / "dicomweb" / hashlib.md5(url.encode()).hexdigest()[:12]
    )
