"""Data-parallel training (anatomark.distributed): real processes, real gloo process group, a tiny model."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from _synthetic import DOTS, make_dot_images, tiny_recipe
from anatomark import distributed as dist
from anatomark.errors import AnatomarkError
from anatomark.families.cascade import CascadeModel
from anatomark.model import load_model
from anatomark.networks import build_network
from anatomark.training import train_distributed


class RecordEpochs:
    """A picklable on_epoch callback noting which process and rank ran it."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, rec: dict) -> None:
        self.calls.append({"epoch": rec["epoch"], "rank": dist.rank(), "pid": os.getpid(), "val": "val_mre_mm" in rec})


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """The digest anatomark.distributed.finish reports for a rank's final weights."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def test_two_cpu_processes_gloo_train_in_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items = make_dot_images(tmp_path / "train", 8, seed=3)
    val = make_dot_images(tmp_path / "val", 2, seed=4)
    recipe = tiny_recipe(epochs=2)
    recipe["train"]["batch_size"] = 2
    recipe["augment"] = {}
    plan = dist.plan(multi_gpu=True, cpu_processes=2)
    assert plan == dist.Plan(2, "gloo", ("cpu", "cpu"))
    cb = RecordEpochs()
    out = tmp_path / "run"
    res = train_distributed(plan, recipe, items, out, val_items=val, progress=False, on_epoch=cb)

    d = res["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    r0, r1 = d["ranks"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert len({r0["pid"], r1["pid"], os.getpid()}) == 3, "each rank is its own process"
    # ranks get different shards: every epoch, disjoint halves that together cover the training set
    (f0,), (f1,) = r0["fits"], r1["fits"]
    assert len(f0["ids_per_epoch"]) == len(f1["ids_per_epoch"]) == 2
    all_ids = sorted(it["id"] for it in items)
    for e0, e1 in zip(f0["ids_per_epoch"], f1["ids_per_epoch"]):
        assert len(e0) == len(e1) == 4
        assert not set(e0) & set(e1)
        assert sorted(e0 + e1) == all_ids
    assert f0["ids_per_epoch"][0] != f0["ids_per_epoch"][1], "the sampler reshuffles every epoch"
    # gradients are averaged: the weights are identical on both ranks, and equal to what rank 0 saved
    assert f0["weights_sha256"] == f1["weights_sha256"]
    last = torch.load(out / "last.pt", weights_only=False)
    assert weights_digest(last["net"]) == f0["weights_sha256"]
    assert weights_digest(last["net"]) != weights_digest(_initial_state(recipe)), "the weights were trained"
    # only rank 0 validated, saved and ran the callback
    assert [c["epoch"] for c in cb.calls] == [1, 2]
    assert {c["rank"] for c in cb.calls} == {0} and {c["pid"] for c in cb.calls} == {r0["pid"]}
    assert all(c["val"] for c in cb.calls)
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and all("val_mre_mm" in h for h in hist)
    model = load_model(res["model_path"])
    assert model.landmark_set.names == ["left_dot", "right_dot"]
    assert model.info["n_train"] == 8 and model.info["n_val"] == 2
    assert res["best_val_mre_mm"] == min(h["val_mre_mm"] for h in hist)


def _initial_state(recipe: dict) -> dict[str, torch.Tensor]:
    from anatomark.training import set_determinism

    set_determinism(int(recipe["train"]["seed"]))
    return build_network(recipe["network"], out_channels=2).state_dict()


def test_plan_follows_monailabel_options(monkeypatch):
    monkeypatch.delenv(dist.ENV_CPU_PROCESSES, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert dist.plan() is None
    assert dist.plan(multi_gpu=True) is None  # no GPU: one process, as MONAI Label falls back
    assert dist.plan(multi_gpu="false", cpu_processes=2) is None
    assert dist.plan(multi_gpu="true", cpu_processes="3") == dist.Plan(3, "gloo", ("cpu",) * 3)
    assert dist.plan(multi_gpu=True, cpu_processes=1) is None
    monkeypatch.setenv(dist.ENV_CPU_PROCESSES, "2")
    assert dist.plan(multi_gpu=True) == dist.Plan(2, "gloo", ("cpu", "cpu"))
    with pytest.raises(AnatomarkError, match="cpu_processes"):
        dist.plan(multi_gpu=True, cpu_processes="many")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert dist.plan(multi_gpu=True, gpus="all") == dist.Plan(4, "nccl", ("cuda:0", "cuda:1", "cuda:2", "cuda:3"))
    assert dist.plan(multi_gpu=True, gpus="0,2") == dist.Plan(2, "nccl", ("cuda:0", "cuda:2"))
    assert dist.plan(multi_gpu=True, gpus="1") is None  # one GPU selected: one process
    assert dist.plan(multi_gpu=False, gpus="all") is None
    with pytest.raises(AnatomarkError, match="not available"):
        dist.plan(multi_gpu=True, gpus="0,5")


def test_helpers_are_no_ops_in_one_process():
    assert dist.current() is None and dist.rank() == 0 and dist.is_main()
    net = torch.nn.Linear(2, 2)
    assert dist.wrap(net) is net
    assert dist.mean(1.5) == 1.5 and dist.from_main(2.5) == 2.5 and dist.shard_size(7) == 7
    assert dist.device() is None


def test_two_cpu_processes_fine_tune_a_cascade(tmp_path, monkeypatch):
    """What the server's Train button does for the default (cascade) model, in two gloo processes: both stages are
    fine-tuned in sync and rank 0 writes one cascade model file."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r1 = tiny_recipe(epochs=1)
    r1["train"]["batch_size"] = 4
    local = {
        "network": {"name": "heatmap_unet", "spatial_dims": 2, "features": [8, 8, 16, 16, 32, 8]},
        "spacing_mm": 0.5,
        "patch_size": 32,
        "sigma": 2.0,
        "offset_sigma_mm": 2.0,
        "max_offset_mm": 5.0,
        "iterations": 1,
        "decode": {"method": "local_mean", "radius": 3},
    }
    full = {**r1, "name": "dots_cascade", "kind": "cascade", "local": local}
    full["train"]["patches_per_image"] = 2
    init = CascadeModel(
        build_network(r1["network"], out_channels=2), build_network(local["network"], out_channels=2), full, DOTS
    ).save(tmp_path / "init.pt")
    items = make_dot_images(tmp_path / "train", 4, seed=6)
    val = make_dot_images(tmp_path / "val", 1, seed=7)
    out = tmp_path / "ft"
    res = train_distributed(
        dist.Plan(2, "gloo", ("cpu", "cpu")),
        full,
        items,
        out,
        init_weights=init,
        epochs=1,
        val_items=val,
        progress=False,
    )
    r0, r1_ = res["distributed"]["ranks"]
    assert len(r0["fits"]) == len(r1_["fits"]) == 2  # stage 1, then the local refiner
    for f0, f1 in zip(r0["fits"], r1_["fits"]):
        assert f0["weights_sha256"] == f1["weights_sha256"]
        s0, s1 = f0["samples_per_epoch"][0], f1["samples_per_epoch"][0]
        assert len(s0) == len(s1) and not set(s0) & set(s1)
    assert len(r0["fits"][1]["samples_per_epoch"][0]) == 4  # 4 images x 2 patches, half per rank
    model = load_model(res["model_path"])
    assert isinstance(model, CascadeModel) and model.landmark_set.names == DOTS.names
    assert model.info["n_train"] == 4 and model.info["n_val"] == 1
