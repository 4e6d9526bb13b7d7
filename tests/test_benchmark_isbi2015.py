"""``benchmarks/isbi2015.py`` on a tiny synthetic two-annotator dataset: the report measures the annotation noise and
keeps the hand-written history of models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from _synthetic import DOTS, make_dot_images

REPO = Path(__file__).resolve().parents[1]


def _two_annotator_dataset(root: Path) -> Path:
    """8 dot images, in ``train`` and in ``test1``; the junior annotation is 5 px (3, 4) off on the first 4 images, exact on the rest."""
    items = make_dot_images(root / "images", 8, seed=11)
    header = "image," + ",".join(f"{n}_{c}" for n in DOTS.names for c in "xy")
    rows = {"senior": [header], "junior": [header]}
    for i, it in enumerate(items):
        name = Path(it["image"]).name
        pts = np.asarray(it["landmarks"], float)
        rows["senior"].append(name + "," + ",".join(f"{v:.1f}" for v in pts.ravel()))
        rows["junior"].append(name + "," + ",".join(f"{v:.1f}" for v in (pts + ([3, 4] if i < 4 else 0)).ravel()))
    for who, lines in rows.items():
        (root / f"landmarks_{who}.csv").write_text("\n".join(lines) + "\n")
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "splits.json").write_text(json.dumps({"train": names, "test1": names}))
    (root / "dataset.yaml").write_text(yaml.safe_dump({"spacing_mm": [1.0, 1.0]}))
    return root


def test_report_measures_annotation_noise_and_keeps_the_models_section(dots_model, tmp_path):
    _, res = dots_model
    ds = _two_annotator_dataset(tmp_path / "ds")
    out = tmp_path / "report" / "isbi2015.md"
    out.parent.mkdir()
    history = "## Models measured on the test split\n\n| model | MRE |\n|---|---|\n| an older model | 9.99 |\n"
    out.write_text("# old report\n\n" + history + "\n## Result\n\nold numbers\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "isbi2015.py"), "--model", res["model_path"]]
    proc = subprocess.run([*cmd, "--dataset", str(ds), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| an older model | 9.99 |" in text and "old numbers" not in text
    assert text.index("## Models measured") < text.index("## Result") < text.index("## Annotation noise")
    section = text[text.index("## Annotation noise: senior against junior") :]
    # half of the 16 points are 5 mm apart, half identical
    assert "annotation, 1 mm/px" in text and "differ by 2.50 mm on average" in section
    assert "50.0 % of points more than 4 mm apart" in section
    assert "On the 8 points (50.0 %) where the annotators agree within 2 mm" in section
    table = [ln for ln in section.splitlines() if ln.startswith("| 1 | left_dot")]
    cells = table[0].split(" | ")
    assert cells[2] == "2.50" and cells[3] == "(-1.50, -2.00)"  # junior is (3, 4) px off on half the images
    assert (out.parent / "isbi2015_sdr.png").is_file() and (out.parent / "isbi2015_best.png").is_file()


def test_report_on_the_validation_images_of_the_models_recipe(dots_model, tmp_path):
    from anatomark.model import load_model
    from anatomark.training import recipe_split

    _, res = dots_model
    ds = _two_annotator_dataset(tmp_path / "ds")
    out = tmp_path / "val.md"
    cmd = [sys.executable, str(REPO / "benchmarks" / "isbi2015.py"), "--model", res["model_path"], "--split", "train"]
    cmd += ["--subset", "validation", "--dataset", str(ds), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, val = recipe_split(8, load_model(res["model_path"]).recipe["train"])
    text = out.read_text()
    assert f"the {len(val)} validation images the model's recipe held out of `train`" in text
    assert f"over {len(val)} images" in text
    assert "Published results on Test1" not in text  # the published numbers are Test1 numbers


def test_the_training_line_says_when_refiners_held_nothing_out(monkeypatch):
    """A refit on every training image reports no validation figure for the composition (its refiners saw those)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import isbi2015 as bench

    held = {"n_train": 135, "n_val": 15, "split": "train", "annotator": "mean", "epoch": 41, "val_mre_mm": 0.96}
    refit = {"n_train": 150, "n_val": 0, "split": "train", "annotator": "mean", "epoch": 45, "train_seconds": 3000}
    info = {"base": held, "local": {"members": [{"path": "a.pt", **refit}]}, "val_mre_mm": 0.5, "n_val": 15}
    line = bench.training_line(info)
    assert "all 150 images of `train` (mean), none held out; epoch 45 (lowest training loss)" in line
    assert "no validation figure" in line and "0.500" not in line
    info["local"]["members"][0] = {"path": "a.pt", **held}
    assert "validation MRE of the composition 0.500 mm on 15 images" in bench.training_line(info)
