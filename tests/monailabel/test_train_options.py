"""Training options of ``POST /train/<model>`` are checked before a training subprocess starts (422 with the reason).

The schema is the train task's own (``LandmarkTrainTask.OPTIONS``); the request validator asks the task.
"""

from __future__ import annotations

import json

import pytest

from anatomark.monailabel.train import LandmarkTrainTask
from anatomark.monailabel.validation import options_body_problem


def train_options_problem(body: bytes) -> tuple[int, str] | None:
    """What ``POST /train/<model>`` answers for this body (as the request validator does)."""
    return options_body_problem(body, LandmarkTrainTask.options_problem, "Training options")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_epochs": 2},
        {"multi_gpu": True, "gpus": "all"},
        {"multi_gpu": False, "gpus": "0, 2"},
        {"cpu_processes": 2},
        {"lr": 1e-4, "val_fraction": 0.0, "batch_size": 4, "trigger": "anything else passes"},
    ],
)
def test_valid_training_options_pass(params):
    assert train_options_problem(json.dumps(params).encode()) is None
    assert LandmarkTrainTask.options_problem(params) is None


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
        ({"max_epochs": True}, "'max_epochs' must be an integer"),
        ({"lr": float("nan")}, "'lr' must be a number in [1e-08, 1]"),
    ],
)
def test_bad_training_options_get_422_with_the_reason(params, words):
    code, why = train_options_problem(json.dumps(params).encode())
    assert code == 422 and words in why and why.startswith("Training option ")
    assert LandmarkTrainTask.options_problem(params) == why


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[1, 2]", "Training options must be a JSON object, got list"),
        (b"{not json", "Training options must be a JSON object (Expecting"),
        (b"\xff", "Training options must be a JSON object ("),
    ],
)
def test_a_body_that_is_not_an_object_gets_422(body, words):
    code, why = train_options_problem(body)
    assert code == 422 and why.startswith(words)


def test_null_body_is_no_options():
    assert train_options_problem(b"null") is None


def test_the_first_bad_option_in_schema_order_is_answered():
    why = LandmarkTrainTask.options_problem({"gpus": "x", "multi_gpu": 1, "max_epochs": 0})
    assert why is not None and why.startswith("Training option 'max_epochs'")
