"""The Data & model page's "Pretrain on this pool" block: a background job with progress and
Cancel, whose backbone then appears in the Backbone list (AppTest, real engine, tiny pool)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180

pytestmark = pytest.mark.usefixtures("through_app_py")


def _wait(manager, kind: str) -> list[dict]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        active = manager.list(kind=kind, active_only=True)
        if not active:
            return manager.list(kind=kind)
        manager.wait(active[0]["id"], timeout=max(0.1, deadline - time.monotonic()))
    raise AssertionError(f"{kind} jobs still running after {TIMEOUT}s")


def test_pretrain_block_runs_a_job_and_offers_the_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/data.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="data_dataset").set_value("synthetic").run()
    at.radio(key="data_pool_choice").set_value("custom").run()
    at.number_input(key="data_limit").set_value(40).run()
    at.selectbox(key="pt_arch").set_value("tiny-cnn").run()
    at.selectbox(key="pt_method").set_value("vicreg").run()
    at.number_input(key="pt_epochs").set_value(1).run()
    assert at.text_input(key="pt_name").placeholder == "synthetic-tiny-cnn-vicreg"  # the name follows the choices
    at.button(key="pt_start").click().run()
    assert not at.exception, [e.value for e in at.exception]

    from pages import _common as common

    records = _wait(common.job_manager(), "pretrain")
    assert records[0]["status"] == "done", records[0]
    assert records[0]["result"]["backbone"] == "pool:synthetic-tiny-cnn-vicreg"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("pool:synthetic-tiny-cnn-vicreg" in s.value for s in at.success), [s.value for s in at.success]
    assert "pool:synthetic-tiny-cnn-vicreg" in at.selectbox(key="data_backbone").options
