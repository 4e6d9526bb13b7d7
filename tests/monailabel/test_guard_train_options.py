"""Training options of ``POST /train/<model>`` are checked before a training subprocess starts (422 with the reason)."""

from __future__ import annotations

import json

import pytest

from anatomark.monailabel.guard import train_options_problem


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_epochs": 2},
        {"multi_gpu": True, "gpus": "all"},
        {"multi_gpu": False, "gpus": "0, 2"},
        {"cpu_processes": 2},
    ],
)
def test_valid_training_options_pass(params):
    assert train_options_problem(json.dumps(params).encode()) is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"multi_gpu": "yes"}, "'multi_gpu' must be true or false"),
        ({"gpus": "first"}, "'gpus' must be \"all\" or GPU indices"),
        ({"gpus": [0, 1]}, "'gpus' must be"),
        ({"gpus": ""}, "'gpus' must be"),
        ({"cpu_processes": 0}, "'cpu_processes' must be an integer in [1, 64]"),
        ({"cpu_processes": 1.5}, "'cpu_processes' must be an integer"),
        ({"max_epochs": -1}, "'max_epochs' must be an integer"),
    ],
)
def test_bad_training_options_get_422_with_the_reason(params, words):
    code, why = train_options_problem(json.dumps(params).encode())
    assert code == 422 and words in why
