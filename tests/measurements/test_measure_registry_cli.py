from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from measure_cases import ISBI_NAMES, isbi_points

from anatomark.cli import main
from anatomark.errors import AnatomarkError
from anatomark.measurements import available_measurements, measure, measurements_for

SETS = ["isbi2015_cephalometric", "fernandes2023_yen", "aasce2019_spine", "lower_limb_amador2024"]


@pytest.mark.parametrize("name", SETS)
def test_registry_returns_json_serialisable_results_for_every_set(name):
    from anatomark.config import load_landmark_set

    ls = load_landmark_set(name)
    pts = np.full((len(ls), 2), np.nan)
    out = measurements_for(name, pts, None)
    json.dumps(out, allow_nan=False)
    assert [d["name"] for d in out] == available_measurements(name)
    assert all(d["value"] is None and d["computable"] is False and d["reason"] for d in out)


def test_registry_values_and_unknown_sets():
    # the registry uses the official truncation to integer pixels: 82 deg exact, 81.95 after truncation
    out = measurements_for("isbi2015_cephalometric", isbi_points(), (0.1, 0.1))
    json.dumps(out, allow_nan=False)
    sna = next(d for d in out if d["name"] == "SNA")
    assert sna["value"] == pytest.approx(82.0, abs=0.1) and sna["unit"] == "deg" and sna["class"] == 1
    assert measurements_for("no_such_set", np.zeros((3, 2))) == []
    assert set(SETS) <= set(available_measurements())
    from anatomark.config import LandmarkSet

    with pytest.raises(AnatomarkError, match="No measurements"):
        measure(np.zeros((2, 2)), LandmarkSet("two", ["a", "b"]))
    with pytest.raises(AnatomarkError, match="19"):
        measure(np.zeros((3, 2)), "isbi2015_cephalometric")
    with pytest.raises(AnatomarkError, match="positive"):
        measure(isbi_points(), "isbi2015_cephalometric", spacing=(0.0, 0.1))


def test_lengths_in_pixels_without_spacing():
    (mad,) = [r for r in measure(np.full((18, 2), 1.0), "lower_limb_amador2024") if r.name == "right_MAD"]
    assert mad.unit == "px"  # no spacing anywhere: never claim mm


def _infer_json(path, pts, names, image=None):
    doc = {
        "image": image or "none.png",
        "spacing_mm": [0.1, 0.1],
        "landmark_set": "isbi2015_cephalometric",
        "landmarks": [{"index": k + 1, "name": n, "x": float(p[0]), "y": float(p[1])} for k, (n, p) in enumerate(zip(names, pts))],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_cli_measure_json_to_csv_and_report(tmp_path, capsys):
    src = _infer_json(tmp_path / "pts.json", isbi_points(), ISBI_NAMES)
    assert main(["measure", str(src), "--out", str(tmp_path / "m.csv"), "--report", str(tmp_path / "rep")]) == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["name"] for r in rows] == ["ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"]
    sna = next(r for r in rows if r["name"] == "SNA")
    assert float(sna["value"]) == pytest.approx(82.0, abs=0.1) and sna["class"] == "1"
    assert (tmp_path / "rep" / "pts_measurements.png").is_file()
    # JSON output, printed table
    assert main(["measure", str(src), "--out", str(tmp_path / "m.json")]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["images"][0]["measurements"][0]["name"] == "ANB"
    assert main(["measure", str(src)]) == 0
    assert "SNA" in capsys.readouterr().out


def test_cli_measure_errors(tmp_path, capsys):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("image,a_x,a_y\nx.png,1,2\n")
    assert main(["measure", str(csv_path)]) == 2
    assert "--landmark-set" in capsys.readouterr().err
    assert main(["measure"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"landmark_set": "isbi2015_cephalometric", "landmarks": [{"name": "nope", "x": 1, "y": 2}]})
    )
    assert main(["measure", str(bad)]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_measure_dataset_isbi(isbi_dir, tmp_path):
    out = tmp_path / "t.csv"
    rc = main(["measure", "--dataset", str(isbi_dir), "--split", "test1", "--annotator", "senior",
               "--landmark-set", "isbi2015_cephalometric", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 150 * 8 and all(r["value"] for r in rows)


def test_cli_measure_dataset_aasce(aasce_dir, tmp_path):
    out = tmp_path / "a.csv"
    assert main(["measure", "--dataset", str(aasce_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 481 * 3
    first = [float(r["value"]) for r in rows[:3]]
    np.testing.assert_allclose(first, [41.139, 14.63, 40.147], atol=0.01)  # angles.csv row 1


def _infer_like(path, pts, size_wh, **extra):
    doc = {
        "landmark_set": "isbi2015_cephalometric",
        "spacing_mm": [0.1, 0.1],
        "size_wh": list(size_wh),
        "landmarks": [{"name": n, "x": float(p[0]), "y": float(p[1])} for n, p in zip(ISBI_NAMES, pts)],
        **extra,
    }
    path.write_text(json.dumps(doc))
    return path


def test_measure_keeps_withholding_what_infer_did_not_stand_behind(tmp_path):
    pts = isbi_points()
    size = (1935, 2400)
    plain = _infer_like(tmp_path / "plain.json", pts, size)
    bad = _infer_like(tmp_path / "bad.json", pts, size, quality={"reliable": False, "warnings": ["implausible shape"]})
    mirrored = pts * np.array([-1.0, 1.0]) + np.array([size[0] - 1.0, 0.0])
    mir = _infer_like(tmp_path / "mir.json", mirrored, size, orientation={"applied": "flip_x"})
    one = _infer_like(tmp_path / "one.json", pts, size)
    doc = json.loads(one.read_text())
    doc["landmarks"][4]["reliable"] = False  # subspinale
    one.write_text(json.dumps(doc))
    out = {}
    for p in (plain, bad, mir, one):
        assert main(["measure", str(p), "--out", str(tmp_path / f"{p.stem}_m.json")]) == 0
        res = json.loads((tmp_path / f"{p.stem}_m.json").read_text())["images"][0]["measurements"]
        out[p.stem] = {m["name"]: m for m in res}
    assert all(m["value"] is not None for m in out["plain"].values())
    assert all(m["value"] is None and "judged unreliable" in m["reason"] for m in out["bad"].values())
    for name, m in out["plain"].items():  # the anatomy's values, not the mirror's
        assert out["mir"][name]["value"] == pytest.approx(m["value"], abs=1e-6), name
    assert out["one"]["SNA"]["value"] is None and "subspinale is unreliable" in out["one"]["SNA"]["reason"]
    assert out["one"]["SNB"]["value"] == pytest.approx(out["plain"]["SNB"]["value"])
