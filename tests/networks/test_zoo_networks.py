"""Forward/backward shapes of the model-zoo networks at two input sizes."""

from __future__ import annotations

import pytest
import torch

from anatomark.errors import AnatomarkError
from anatomark.networks import NETWORKS, build_network
from anatomark.networks.appearance_context import CBAM
from anatomark.networks.fpn_seg import FPNBlock

K = 3
SEG_REGRESSION = {
    "name": "seg_regression",
    "spatial_dims": 2,
    "unet_features": [4, 8, 8, 16],
    "vgg_features": [4, 8, 8],
    "fc_features": 16,
}
SMALL = {
    "unet_seg": {"name": "unet_seg", "spatial_dims": 2, "features": [4, 8, 8, 16], "dropout": 0.1},
    "fpn_seg": {"name": "fpn_seg", "spatial_dims": 2, "features": [4, 8, 8, 16], "dropout": 0.1},
    "appearance_context": {
        "name": "appearance_context",
        "spatial_dims": 2,
        "features": [4, 8, 8, 16],
        "context_features": 8,
        "context_downscale": 4,
    },
    "seg_regression": SEG_REGRESSION,
    "seg_regression_coordconv": {**SEG_REGRESSION, "coord_channels": True},
    "seg_regression_anchored": {**SEG_REGRESSION, "coord_channels": True, "anchor_radius": 3},
    "farnet": {
        "name": "farnet",
        "spatial_dims": 2,
        "init_features": 8,
        "growth_rate": 4,
        "block_config": [2, 2, 2, 2],
        "msfa_channels": [8, 8, 4, 4],
        "refine_channels": [8, 4],
    },
}


def test_every_family_is_registered():
    assert {c["name"] for c in SMALL.values()} <= set(NETWORKS)


@pytest.mark.parametrize("hw", [(64, 64), (96, 128)])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_backward_shapes(name, hw):
    torch.manual_seed(0)
    net = build_network(SMALL[name], out_channels=K)
    x = torch.randn(2, 1, *hw, requires_grad=True)
    out = net(x)
    outs = out if isinstance(out, tuple) else (out,)
    h, w = hw
    if name.startswith("seg_regression"):
        assert outs[0].shape == (2, K, h, w)
        assert outs[1].shape == (2, K, 2)
    elif name == "farnet":
        assert outs[0].shape == (2, K, h, w)
        assert outs[1].shape == (2, K, h // 4, w // 4)
    else:
        assert len(outs) == 1 and outs[0].shape == (2, K, h, w)
    sum(o.square().mean() for o in outs).backward()
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_default_farnet_uses_densenet121_encoder():
    net = build_network({"name": "farnet"}, out_channels=19)
    # DenseNet-121: 6/12/24/16 dense layers, 1024 channels after the last block
    assert [len(b) for b in net.blocks] == [6, 12, 24, 16]
    assert net.norm5.num_features == 1024


def test_appearance_context_output_is_local_times_context():
    torch.manual_seed(0)
    net = build_network(SMALL["appearance_context"], out_channels=K).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        local = net.local_appearance(x)
        out = net(x)
    ratio = out / local
    # the context map is smooth (computed at 1/4 resolution and upsampled), so the ratio varies slowly
    assert torch.isfinite(ratio).all()
    assert not torch.allclose(out, local)
    assert len([m for m in net.context if m.__class__.__name__ == "Convolution"]) == 8  # 7 dilated + 1x1 head


def test_cbam_and_fpn_block_shapes():
    x = torch.randn(2, 6, 16, 20)
    assert CBAM(2, 6)(x).shape == x.shape
    blk = FPNBlock(2, top_channels=12, skip_channels=6, out_channels=6, dropout=0.0)
    assert blk(torch.randn(2, 12, 8, 10), x).shape == (2, 6, 16, 20)


def test_unet_seg_uses_batchnorm_dropout_and_he_init():
    net = build_network({"name": "unet_seg", "features": [8, 16, 32], "dropout": 0.2}, out_channels=2)
    mods = list(net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in mods)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in mods)
    conv = net.down[1][0].conv
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - (2.0 / fan_in) ** 0.5) < 0.3 * (2.0 / fan_in) ** 0.5


def test_coord_channels_show_the_regressor_where_each_mask_lies():
    net = build_network(SMALL["seg_regression_coordconv"], out_channels=K)
    n_in = next(p for p in net.vgg.parameters() if p.ndim == 4).shape[1]
    assert n_in == 1 + 3 * K + 2  # image, K masks, x and y maps, K masks times x, K masks times y


def test_mask_centres_are_the_windowed_centroid_around_each_maximum():
    from anatomark.networks.seg_regression import mask_centres

    h, w = 32, 48
    logits = torch.full((1, 2, h, w), -20.0)
    logits[0, 0, 10, 30] = 5.0  # a peak at (x 30, y 10) with equal neighbours left and right of it
    logits[0, 0, 10, 29] = logits[0, 0, 10, 31] = 4.0
    logits[0, 0, 2, 2] = 4.9  # a second blob far outside the window: it must not pull the centre
    logits[0, 1, 20, 5] = 5.0
    logits[0, 1, 20, 6] = 5.0  # two equal pixels: the centre between them
    gy, gx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    c = mask_centres(logits.requires_grad_(), gx, gy, radius=3)
    px = c.detach()[0] * torch.tensor([w - 1, h - 1])
    assert torch.allclose(px[0], torch.tensor([30.0, 10.0]), atol=1e-3)
    assert torch.allclose(px[1], torch.tensor([5.5, 20.0]), atol=1e-3)
    c.sum().backward()  # differentiable in the logits
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_an_anchored_regressor_starts_at_each_mask_centre():
    from anatomark.networks.seg_regression import mask_centres

    torch.manual_seed(0)
    net = build_network(SMALL["seg_regression_anchored"], out_channels=K).eval()
    x = torch.randn(1, 1, 64, 64)
    masks, coords = net(x)
    gy, gx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    assert torch.allclose(coords, mask_centres(masks, gx, gy, 3), atol=1e-6)


def test_softmax_ensemble_averages_the_members_probabilities():
    torch.manual_seed(0)
    member = {"name": "heatmap_unet", "spatial_dims": 2, "in_channels": 2, "features": [4, 4, 8, 8, 8, 4]}
    ens = build_network({"name": "softmax_ensemble", "in_channels": 2, "members": [member, member]}, 3).eval()
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        probs = [torch.softmax(m(x).flatten(2), -1) for m in ens.members]
        got = torch.exp(ens(x)).flatten(2)
    assert not torch.allclose(probs[0], probs[1])  # two differently initialised members
    torch.testing.assert_close(got, (probs[0] + probs[1]) / 2, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3))
    # a refiner reads one map per patch: combining only those gives the same maps as combining all of them
    rows, chans = torch.tensor([0, 1]), torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(ens.select_maps(x, rows, chans), ens(x)[rows, chans], rtol=1e-5, atol=1e-6)
    with pytest.raises(AnatomarkError, match="in_channels 1 differs"):
        build_network({"name": "softmax_ensemble", "in_channels": 1, "members": [member]}, 3)
    with pytest.raises(AnatomarkError, match="non-empty"):
        build_network({"name": "softmax_ensemble", "members": []}, 3)


def test_softmax_ensemble_covers_average_only_the_members_answering_for_a_channel():
    """covers: channel 0 is member 1's alone (a specialist), channels 1-2 the mean of both; select_maps runs a member
    only on the patches whose channel it answers for and gives the same maps as forward."""
    torch.manual_seed(0)
    member = {"name": "heatmap_unet", "spatial_dims": 2, "in_channels": 1, "features": [4, 4, 8, 8, 8, 4]}
    cfg = {"name": "softmax_ensemble", "members": [member, member], "covers": [[1, 2], None]}
    ens = build_network(cfg, 3).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        p = [torch.softmax(m(x).flatten(2), -1) for m in ens.members]
        got = torch.exp(ens(x)).flatten(2)
        torch.testing.assert_close(got[:, 0], p[1][:, 0], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(got[:, 1:], (p[0][:, 1:] + p[1][:, 1:]) / 2, rtol=1e-5, atol=1e-8)
        rows, chans = torch.arange(4), torch.tensor([0, 1, 2, 0])
        torch.testing.assert_close(ens.select_maps(x, rows, chans), ens(x)[rows, chans], rtol=1e-5, atol=1e-6)
    with pytest.raises(AnatomarkError, match=r"no member answers for channels \[0\]"):
        build_network({**cfg, "covers": [[1, 2], [2]]}, 3)
    with pytest.raises(AnatomarkError, match="channels must be in 0..2"):
        build_network({**cfg, "covers": [[3], None]}, 3)
    with pytest.raises(AnatomarkError, match="1 entries for 2 members"):
        build_network({**cfg, "covers": [None]}, 3)
