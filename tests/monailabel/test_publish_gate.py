"""Publication gate decisions, the version store beside the published weights (publish, prune, rollback) and the
``anatomark served`` command, without a server (file contents stand in for model files: versions are content hashes).
"""

from __future__ import annotations

import json

import pytest

from anatomark.cli import main as cli
from anatomark.errors import AnatomarkError
from anatomark.monailabel.published import PublishedModel, VersionConflictError, file_version
from anatomark.monailabel.train import GatePolicy, gate_decision


def scores(cand: float | None, served: float | None, n: int = 2, missed: tuple[int, int] = (0, 0)) -> dict:
    return {
        "images": [f"v{i}" for i in range(n)],
        "skipped": [],
        "models": {
            "candidate": {"mre_mm": cand, "missed": missed[0], "per_image": []},
            "served": {"mre_mm": served, "missed": missed[1], "per_image": []},
        },
    }


def test_gate_publishes_only_what_is_not_worse():
    p = GatePolicy()
    assert p.tolerance_mm == 0.0 and p.min_val_images == 1  # strictly not worse, by default
    assert gate_decision(scores(1.50, 1.60), p)[0]
    assert gate_decision(scores(1.60, 1.60), p)[0]  # equal is not worse
    ok, why = gate_decision(scores(59.0, 1.60), p)
    assert not ok and "worse than the served model" in why and "59.000" in why and "1.600" in why
    assert not gate_decision(scores(1.601, 1.60), p)[0]
    assert gate_decision(scores(1.64, 1.60), GatePolicy(tolerance_mm=0.05))[0]  # within a tolerance
    assert not gate_decision(scores(1.66, 1.60), GatePolicy(tolerance_mm=0.05))[0]
    assert not gate_decision(scores(1.0, 1.6, missed=(2, 0)), p)[0]  # fewer points is worse
    ok, why = gate_decision(scores(None, None, n=0), p)
    assert not ok and "too few validation labels" in why
    assert not gate_decision(scores(1.0, 1.6, n=1), GatePolicy(min_val_images=2))[0]
    assert gate_decision(scores(None, None, n=0), GatePolicy(min_val_images=0))[0]  # explicit opt-out


def test_gate_policy_from_app_options():
    p = GatePolicy.from_conf({"gate_tolerance_mm": "0", "gate_min_val_images": "3", "keep_versions": "2"})
    assert (p.tolerance_mm, p.min_val_images, p.keep_versions) == (0.0, 3, 2)
    with pytest.raises(ValueError, match="gate_tolerance_mm"):
        GatePolicy.from_conf({"gate_tolerance_mm": "nan"})


@pytest.fixture
def handle(tmp_path):
    shipped = tmp_path / "shipped" / "m.pt"
    shipped.parent.mkdir()
    shipped.write_bytes(b"shipped weights")
    return PublishedModel("m", shipped, tmp_path / "published" / "m.pt", device="cpu")


def weights(tmp_path, text: str):
    p = tmp_path / f"{text}.pt"
    p.write_bytes(text.encode())
    return p


def test_versions_are_kept_pruned_and_rolled_back(handle, tmp_path):
    shipped = handle.current_version()
    v = [handle.publish(weights(tmp_path, f"w{i}"), source="fine-tune", keep=3)["version"] for i in range(4)]
    assert handle.current_version() == v[3] and handle.published_path.read_bytes() == b"w3"
    kept = handle.versions()
    assert [r["version"] for r in kept] == v[1:]  # the oldest was pruned, its file deleted
    assert sorted(p.name for p in handle.versions_dir.glob("*.pt")) == sorted(f"{x}.pt" for x in v[1:])

    res = handle.rollback()
    assert res == {"from": v[3], "to": v[2], "dropped": [v[3]]}
    assert handle.published_path.read_bytes() == b"w2"
    assert handle.rollback(to=v[1][:6])["to"] == v[1]  # a prefix of a kept version
    with pytest.raises(AnatomarkError, match="no kept version"):
        handle.rollback(to=v[3])
    assert handle.rollback()["to"] == shipped  # past the oldest kept version: the shipped weights
    assert not handle.published_path.exists() and handle.path() == handle.shipped_path
    with pytest.raises(AnatomarkError, match="nothing to roll back"):
        handle.rollback()
    log = json.loads((handle.versions_dir / "versions.json").read_text())["log"]
    assert [e["event"] for e in log] == ["publish"] * 4 + ["rollback"] * 3


def test_publish_refuses_when_the_served_model_changed(handle, tmp_path):
    started = handle.current_version()
    handle.publish(weights(tmp_path, "other"), source="manual")  # e.g. a rollback or another publication meanwhile
    with pytest.raises(VersionConflictError):
        handle.publish(weights(tmp_path, "candidate"), source="fine-tune", expect_version=started)
    assert handle.published_path.read_bytes() == b"other"


def test_a_published_file_from_before_versions_can_be_rolled_back_to(handle, tmp_path):
    handle.published_path.parent.mkdir(parents=True)
    handle.published_path.write_bytes(b"published by an older server")
    old = handle.current_version()
    handle.publish(weights(tmp_path, "new"), source="fine-tune")
    assert [r["source"] for r in handle.versions()] == ["unrecorded", "fine-tune"]
    assert handle.rollback()["to"] == old and handle.published_path.read_bytes() == b"published by an older server"


def test_served_command_lists_and_rolls_back(handle, tmp_path, capsys):
    v1 = handle.publish(weights(tmp_path, "a"), source="fine-tune")["version"]
    v2 = handle.publish(weights(tmp_path, "b"), source="fine-tune")["version"]
    base = ["served", "m", "--published-dir", str(handle.published_path.parent), "--shipped", str(handle.shipped_path)]
    assert cli([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["served"] == v2 and [r["version"] for r in doc["versions"]][1:] == [v1, v2]
    assert doc["versions"][0]["source"] == "shipped"
    assert cli([*base, "--rollback"]) == 0
    assert f"rolled back from {v2} to {v1}" in capsys.readouterr().out
    assert file_version(handle.published_path) == v1
    assert cli([*base, "--rollback", "shipped"]) == 0
    assert not handle.published_path.exists()
    assert cli([*base, "--rollback", "nope"]) == 2  # an unknown version is an error, nothing changes
