from __future__ import annotations

import pytest

from anatomark.monailabel.config import _threads
from anatomark.monailabel.infer import training_running


def test_infer_threads_option():
    assert _threads("auto") == -1 and _threads("AUTO") == -1
    assert _threads("2") == 2 and _threads(0) == 0 and _threads("-3") == 0
    with pytest.raises(ValueError, match="infer_threads must be 'auto' or a number"):
        _threads("many")


def test_no_training_outside_a_server():
    assert training_running() is False
