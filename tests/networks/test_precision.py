"""Inference precision settings (``local.precision``) resolve to a dtype, and unknown ones are refused."""

from __future__ import annotations

import pytest
import torch

from anatomark.errors import AnatomarkError
from anatomark.networks import inference_dtype


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
