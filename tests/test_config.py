from __future__ import annotations

import pytest

from anatomark.config import available_landmark_sets, load_landmark_set
from anatomark.errors import AnatomarkError
from anatomark.recipe import load_recipe


def test_isbi_set_order_and_labels():
    ls = load_landmark_set("isbi2015_cephalometric")
    assert len(ls) == 19
    assert ls.names[0] == "sella" and ls.names[9] == "gonion" and ls.names[18] == "articulare"
    assert ls.labels["sella"] == 1 and ls.labels["articulare"] == 19
    assert sorted(ls.labels.values()) == list(range(1, 20))
    assert ls.default_spacing_mm == (0.1, 0.1)
    assert all(c.startswith("#") for c in ls.colors)


def test_unknown_set_and_recipe():
    assert "isbi2015_cephalometric" in available_landmark_sets()
    with pytest.raises(AnatomarkError, match="Unknown landmark set 'knee'.*isbi2015_cephalometric"):
        load_landmark_set("knee")
    with pytest.raises(AnatomarkError, match="not found"):
        load_recipe("no_such_recipe")


def test_recipe_sections():
    r = load_recipe("isbi2015_heatmap_unet")
    assert r["landmark_set"] == "isbi2015_cephalometric"
    assert all(s % 16 == 0 for s in r["input"]["size_hw"])


def test_duplicate_names_rejected(tmp_path):
    (tmp_path / "dup.yaml").write_text("landmarks: [a, b, a]\n")
    with pytest.raises(AnatomarkError, match="duplicate"):
        load_landmark_set(tmp_path / "dup.yaml")


def test_every_shipped_recipe_loads():
    from anatomark.paths import CONFIG_DIR

    names = sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.yaml"))
    assert len(names) >= 7
    for n in names:
        r = load_recipe(n)
        expected = "aasce2019_spine" if n.startswith("aasce2019_") else "isbi2015_cephalometric"
        assert r["landmark_set"] == expected, n
        assert len(load_landmark_set(r["landmark_set"])) in (19, 68), n


def test_landmark_set_indices_keep_the_order_given_and_name_unknown_landmarks():
    from anatomark.config import load_landmark_set
    from anatomark.errors import AnatomarkError

    ls = load_landmark_set("isbi2015_cephalometric")
    assert ls.indices(["gonion", "sella"]) == [ls.names.index("gonion"), 0]
    assert ls.indices([]) == []
    with pytest.raises(AnatomarkError, match=r"local.focus names \['pogonion_x'\] not in landmark set"):
        ls.indices(["sella", "pogonion_x"], "local.focus")
