"""Inference precision settings (``local.precision``, ``input.precision``) resolve to a dtype, unknown ones are
refused, and the bfloat16 copy a model runs follows its network's weights."""

from __future__ import annotations

import pytest
import torch

from anatomark.errors import AnatomarkError
from anatomark.networks import ChannelsLastMaxPool2d, InferenceCopy, inference_dtype


def test_explicit_precisions_resolve_on_any_device():
    for dev in ("cpu", "meta"):
        assert inference_dtype("float32", torch.device(dev)) == torch.float32
        assert inference_dtype("bfloat16", torch.device(dev)) == torch.bfloat16


def test_auto_follows_native_bf16_support():
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert inference_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    assert inference_dtype("auto", torch.device("meta")) == torch.float32  # no native kernels known: stay exact


def test_unknown_precision_is_refused():
    with pytest.raises(AnatomarkError, match="Unknown inference precision 'half'.*float32, bfloat16, auto"):
        inference_dtype("half", torch.device("cpu"))


def _unet() -> torch.nn.Module:
    from anatomark.networks import HeatmapUNet

    torch.manual_seed(0)
    return HeatmapUNet(2, 1, 3, features=(4, 4, 8, 8, 8, 4)).eval()


def test_inference_copy_is_the_network_in_float32_and_a_kept_copy_in_bfloat16():
    net = _unet()
    cpu = torch.device("cpu")
    same, dtype = InferenceCopy("float32").get(net, cpu)
    assert same is net and dtype == torch.float32

    runner = InferenceCopy("bfloat16")
    copy1, dtype = runner.get(net, cpu)
    assert copy1 is not net and dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in copy1.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the network itself is untouched
    assert not any(isinstance(m, ChannelsLastMaxPool2d) for m in net.modules())
    assert runner.get(net, cpu)[0] is copy1  # kept while the weights stay

    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = copy1(x.to(torch.bfloat16)).float()
    # an optimizer step changes the weights in place: the next call gets a fresh copy with the new weights
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net.train()
    net(x).square().mean().backward()
    opt.step()
    net.eval()
    copy2, _ = runner.get(net, cpu)
    assert copy2 is not copy1
    with torch.no_grad():
        after = copy2(x.to(torch.bfloat16)).float()
        exact = net(x)
    assert not torch.allclose(before, after)
    assert torch.allclose(after, exact, atol=0.05 * float(exact.abs().max()) + 1e-3)


def test_channels_last_pooling_gives_the_same_values():
    pool = torch.nn.MaxPool2d(2)
    wrapped = ChannelsLastMaxPool2d(pool)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 16, 12).to(dtype)
        out = wrapped(x)
        assert torch.equal(out, pool(x)) and out.is_contiguous()
    # the bfloat16 copy of a U-Net pools channels-last and predicts what it did with ATen's own pooling
    net = _unet()
    copy_, _ = InferenceCopy("bfloat16").get(net, torch.device("cpu"))
    pools = [m for m in copy_.modules() if isinstance(m, ChannelsLastMaxPool2d)]
    assert len(pools) == 4
    plain = net.to(torch.bfloat16)
    x = torch.randn(2, 1, 32, 32).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(copy_(x), plain(x))
