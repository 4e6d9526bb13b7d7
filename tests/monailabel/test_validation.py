"""The app's request validator: unknown tasks (404), options checked by the task named in the URL (422)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from anatomark.monailabel.train import LandmarkTrainTask
from anatomark.monailabel.validation import NumberOption, OptionSchema, app_request_validator, json_object_problem


class _Datastore:
    def get_image_uri(self, image_id: str) -> str:
        return f"/studies/{image_id}.png" if image_id == "known" else ""

    def get_label_uri(self, image_id: str, tag: str) -> str:
        return ""


class _App:
    def datastore(self) -> _Datastore:
        return _Datastore()


class _TrainTask:
    options_problem = LandmarkTrainTask.options_problem


class _InferTask:
    """An infer task that declares options of its own (its body is not JSON here, so it is not asked)."""

    OPTIONS = OptionSchema({"threshold": NumberOption(float, 0, 1)}, what="Inference option")

    def options_problem(self, options: Mapping[str, Any]) -> str | None:
        return self.OPTIONS.problem(options)


class _ScoringTask:
    """A task without an options schema: any body passes."""


TASKS = {"train": {"m": _TrainTask()}, "infer": {"m": _InferTask()}, "scoring": {"mre": _ScoringTask()}}


@pytest.fixture
def validate():
    return app_request_validator(_App(), lambda kind: TASKS[kind])


def test_unknown_tasks_get_404_with_what_is_available(validate):
    assert validate("POST", "/train/x", [], None) == (404, "Unknown model 'x'; available: m")
    assert validate("POST", "/infer/x", [], None) == (404, "Unknown model 'x'; available: m")
    assert validate("POST", "/batch/infer/x", [], None) == (404, "Unknown model 'x'; available: m")
    assert validate("POST", "/scoring/x", [], None) == (404, "Unknown scoring method 'x'; available: mre")
    assert validate("POST", "/train/m", [], None) is None


def test_the_task_named_in_the_url_checks_its_options(validate):
    code, why = validate("POST", "/train/m", [], json.dumps({"max_epochs": 0}).encode())
    assert code == 422 and why.startswith("Training option 'max_epochs' must be an integer")
    assert validate("POST", "/train/m", [], b"[1]") == (422, "Training options must be a JSON object, got list")
    assert validate("POST", "/train/m", [], json.dumps({"max_epochs": 3}).encode()) is None
    assert validate("POST", "/scoring/mre", [], b'{"anything": -1}') is None  # no schema: not checked


def test_info_of_unknown_ids_gets_404(validate):
    assert validate("GET", "/datastore/image/info", [("image", "nope")], None) == (
        404,
        "Image 'nope' is not in the datastore",
    )
    assert validate("GET", "/datastore/image/info", [("image", "known")], None) is None
    assert validate("GET", "/datastore/label/info", [("label", "known"), ("tag", "final")], None) == (
        404,
        "No label 'final' for image 'known'",
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [("[1, 2]", "must be a JSON object, got list"), ("null", "got NoneType"), ("{", "is not valid JSON")],
)
def test_json_form_fields_must_be_objects(value, words):
    assert words in json_object_problem(value, "params")
    assert json_object_problem('{"a": 1}', "params") is None
    assert json_object_problem("  ", "params") is None
