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
  in the local cache folder; training and scoring read them from there;
- also writes every saved *final* label back to the PACS as a DICOM SR measurement report (TID 1500, one SCOORD
  POINT per landmark, named; :func:`landmarks_sr`, built with ``highdicom``) stored by STOW-RS in the image's study,
  one SR series per image series (a new instance per save). The SR's UIDs go into the label info (``pacs_sr``); a
  PACS that refuses it does not lose the saved label (``pacs_sr.error``);
- reads these SRs back (:meth:`LandmarkDICOMwebDatastore.import_pacs_labels`, run by ``datalist`` at most every
  ``sr_import_ttl`` seconds, so also by every training): an image that has an anatomark SR in the PACS but no final
  label in the cache folder (a new cache, another server, a wiped disk) gets the latest SR's points as its final
  label. A local label is never replaced by an SR.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from anatomark.config import LandmarkSet
from anatomark.data.points_json import points_document, write_points_json
from anatomark.monailabel.datastore import LandmarkDatastore

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("DX", "CR")
#: coding scheme of the landmark names in our SR (a private scheme: the names are the landmark set's)
LANDMARK_SCHEME = "99ANATOMARK"
SR_SERIES_DESCRIPTION = "anatomark landmarks (saved correction)"


def sr_series_uid(image_series_uid: str) -> str:
    """The SR series that holds the saved corrections of one image series (the same UID on every save)."""
    return generate_uid(entropy_srcs=["anatomark-sr", image_series_uid])


def landmarks_sr(
    source: Dataset,
    names: Sequence[str],
    points: np.ndarray,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    observer: str = "anatomark",
    description: str = SR_SERIES_DESCRIPTION,
) -> Dataset:
    """A DICOM SR measurement report (TID 1500) with one planar ROI (TID 1410) per landmark: an SCOORD ``POINT`` on
    ``source``, its tracking identifier and finding type the landmark's name.

    Args:
        source: the image the points are on (its header is enough: UIDs, patient and study attributes).
        names: landmark names, one per row of ``points``.
        points: ``(K, 2)`` pixel positions in our convention (origin at the *centre* of the top-left pixel); rows
            with a NaN (missing landmarks) are left out. DICOM SCOORD puts (0, 0) at the pixel's outer corner, so
            0.5 is added.
        series_instance_uid: the SR's series (default: :func:`sr_series_uid` of the source's series).
        instance_number: the SR's instance number.
        observer: the device observer's name.
        description: the SR's series description.

    Returns:
        The SR as a ``highdicom.sr.ComprehensiveSR`` (a pydicom ``Dataset``; 2D SCOORD only, so not the 3D IOD,
        whose SOP class OHIF hands to its 3D SR display).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(names) != len(points):
        raise ValueError(f"{len(names)} names for {len(points)} points")
    observer_context = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=observer),
    )
    groups = []
    for name, (x, y) in zip(names, points):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([[x + 0.5, y + 0.5]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=str(name)),
                referenced_region=region,
                finding_type=hd.sr.CodedConcept(value=str(name)[:16], scheme_designator=LANDMARK_SCHEME, meaning=name),
            )
        )
    if not groups:
        raise ValueError("No landmark has a position")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer_context),
        procedure_reported=hd.sr.CodedConcept(value="P5-08000", scheme_designator="SRT", meaning="Radiography"),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    series_uid = series_instance_uid or sr_series_uid(str(source.SeriesInstanceUID))
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_uid,
        series_number=int(getattr(source, "SeriesNumber", None) or 0) + 9000,
        sop_instance_uid=hd.UID(),
        instance_number=int(instance_number),
        institution_name="anatomark",
        institutional_department_name="landmarks",
        manufacturer="anatomark",
        series_description=description,
        is_complete=True,
        is_final=True,
    )


def sr_landmarks(sr: Dataset) -> dict[str, tuple[float, float]]:
    """Landmark name -> (x, y) in our pixel convention, read back from a :func:`landmarks_sr` report."""
    out: dict[str, tuple[float, float]] = {}

    def walk(items: Any) -> None:
        for item in items or []:
            if getattr(item, "ValueType", "") == "CONTAINER" and "ContentSequence" in item:
                name = None
                for c in item.ContentSequence:
                    concept = c.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in c else None
                    if concept is not None and concept.CodeMeaning == "Tracking Identifier":
                        name = str(c.TextValue)
                for c in item.ContentSequence:
                    if getattr(c, "ValueType", "") == "SCOORD" and name is not None:
                        gx, gy = (float(v) for v in c.GraphicData[:2])
                        out[name] = (gx - 0.5, gy - 0.5)
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return out


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
        sr_import_ttl: seconds between two looks for SR labels in the PACS by ``datalist`` (< 0: never).
        **kwargs: passed to :class:`LandmarkDatastore` (``on_label_saved``, ``label_radius_mm``).
    """

    def __init__(
        self,
        client: Any,
        landmark_set: LandmarkSet,
        cache_path: str | Path,
        modalities: tuple[str, ...] | list[str] = DEFAULT_MODALITIES,
        list_ttl: float = 5.0,
        sr_import_ttl: float = 60.0,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self.modalities = tuple(m.strip().upper() for m in modalities if m.strip())
        self.list_ttl = float(list_ttl)
        self._series: dict[str, dict[str, Any]] = {}
        self._listed_at = 0.0
        self._list_lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self.sr_import_ttl = float(sr_import_ttl)
        self._sr_imported_at: float | None = None
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

    # ------------------------------------------------------------------ labels
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Save as :class:`LandmarkDatastore` does; a final label is also stored in the PACS as a DICOM SR."""
        saved = super().save_label(image_id, label_filename, label_tag, label_info)
        if (label_tag or "final") == "final":
            self._store_sr(image_id)
        return saved

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """The training list, after importing final labels kept only in the PACS (see :meth:`import_pacs_labels`)."""
        now = time.monotonic()
        due = self._sr_imported_at is None or now - self._sr_imported_at > self.sr_import_ttl
        if self.sr_import_ttl >= 0 and due:
            self._sr_imported_at = now
            try:
                self.import_pacs_labels()
            except Exception:  # noqa: BLE001 - the PACS copy is optional; the local labels still train
                logger.exception("Importing SR labels from the PACS failed")
        return super().datalist(full_path)

    def import_pacs_labels(self) -> list[str]:
        """Final labels from the PACS: for each listed image without a local final label whose SR series
        (:func:`sr_series_uid`) exists, the latest instance's points (highest InstanceNumber) are saved as its final
        label (``source`` ``pacs_sr``; not stored back). Returns the image ids given a label."""
        remote = self._remote_series()
        labelled = set(LandmarkDatastore.get_labeled_images(self, "final"))
        wanted = {sr_series_uid(uid): uid for uid in remote if uid not in labelled}
        if not wanted:
            return []
        imported = []
        for meta in self._client.search_for_series(search_filters={"Modality": "SR"}):
            sr_series = _value(meta, "0020000E")
            uid = wanted.get(sr_series)
            if uid is None:
                continue
            study = _value(meta, "0020000D")
            instances = self._client.search_for_instances(study, sr_series)
            if not instances:
                continue
            last = max(instances, key=lambda m: (int(_value(m, "00200013") or 0), _value(m, "00080018")))
            sr = self._client.retrieve_instance(study, sr_series, _value(last, "00080018"))
            points = sr_landmarks(sr)
            if not points:
                continue
            body = points_document(np.array(list(points.values()), np.float64), list(points), decimals=None)
            info = {"source": "pacs_sr", "pacs_sr": {"SOPInstanceUID": str(sr.SOPInstanceUID), "imported": True}}
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "landmarks.json"
                write_points_json(f, body, indent=None)
                try:
                    LandmarkDatastore.save_label(self, uid, str(f), "final", info)
                except Exception:  # noqa: BLE001 - one bad SR must not stop the others
                    logger.exception(f"SR {sr.SOPInstanceUID} not imported as the label of {uid}")
                    continue
            logger.info(f"Imported the final label of {uid} from SR {sr.SOPInstanceUID} in the PACS")
            imported.append(uid)
        return imported

    def _store_sr(self, image_id: str) -> dict[str, Any]:
        """STOW-RS the saved final label of ``image_id`` as an SR in its study; the outcome goes to ``pacs_sr``."""
        t0 = time.perf_counter()
        record: dict[str, Any] = {}
        try:
            got = self.label_points(image_id, "final")
            if got is None:
                raise FileNotFoundError(f"No final label for {image_id}")
            points, _ = got
            source = pydicom.dcmread(self.get_image_uri(image_id), stop_before_pixels=True)
            sr = landmarks_sr(source, self.landmark_set.names, points, instance_number=int(time.time()) % 2**31)
            self._client.store_instances([sr], study_instance_uid=str(source.StudyInstanceUID))
            record = {
                "SOPInstanceUID": str(sr.SOPInstanceUID),
                "SeriesInstanceUID": str(sr.SeriesInstanceUID),
                "StudyInstanceUID": str(sr.StudyInstanceUID),
                "ts": int(time.time()),
            }
            logger.info(f"Stored the final label of {image_id} in the PACS as SR {sr.SOPInstanceUID}")
        except Exception as e:  # noqa: BLE001 - the label is saved locally; the PACS copy is best effort, reported
            logger.exception(f"Storing the final label of {image_id} as DICOM SR failed")
            record = {"error": f"{type(e).__name__}: {e}", "ts": int(time.time())}
        record["seconds"] = round(time.perf_counter() - t0, 3)
        try:
            self.update_label_info(image_id, "final", {"pacs_sr": record})
        except Exception:  # noqa: BLE001
            logger.exception("Recording the SR in the label info failed")
        return record

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
