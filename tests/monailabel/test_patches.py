"""The MONAI Label 0.8.5 patches: refused on another monailabel version; the bearer-token fix answers 503 when the
identity provider is down."""

from __future__ import annotations

import pytest

from anatomark.monailabel import patches


def test_the_patches_name_the_monailabel_version_they_are_written_for():
    assert patches.MONAILABEL_VERSION == "0.8.5"
    assert patches.installed_monailabel_version() == patches.MONAILABEL_VERSION  # what setup.cfg pins
    patches.require_monailabel_version()


@pytest.mark.parametrize(
    "patch",
    [
        patches.fix_token_decoding,
        patches.check_endpoint_json_fields,
        patches.one_training_at_a_time,
        patches.use_private_upload_dir,
        lambda: patches.harden_server(object()),
        lambda: patches.app_tasks(object(), "train"),
    ],
)
def test_another_monailabel_version_fails_loudly_before_patching(monkeypatch, patch):
    monkeypatch.setattr(patches, "installed_monailabel_version", lambda: "0.9.1")
    with pytest.raises(patches.MonaiLabelVersionError, match=r"written for monailabel 0\.8\.5.*0\.9\.1 is installed"):
        patch()


def test_token_check_answers_503_when_the_identity_provider_is_down(monkeypatch):
    from fastapi import HTTPException
    from hardening_support import free_port
    from monailabel.endpoints.user import auth

    patches.fix_token_decoding()
    monkeypatch.setattr(auth.settings, "MONAI_LABEL_AUTH_ENABLE", True)
    monkeypatch.setattr(auth.settings, "MONAI_LABEL_AUTH_REALM_URI", f"http://127.0.0.1:{free_port()}/realms/none")
    monkeypatch.setattr(auth.settings, "MONAI_LABEL_AUTH_TIMEOUT", 2)
    with pytest.raises(HTTPException) as ei:
        auth.from_token("any.token.value")
    assert ei.value.status_code == 503


def test_busy_detail_says_which_training_and_what_to_do():
    task = {"status": "SUBMITTED", "request": {"model": "m"}, "id": "t1", "start_ts": "now"}
    detail = patches.busy_detail(task)
    assert detail.startswith("A training is already queued (model m, task t1, since now)")
    assert "DELETE /train/" in detail
    assert "running" in patches.busy_detail({**task, "status": "RUNNING"})
