"""Learn page: every walkthrough step draws from the real engine; sliders redraw."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
STEPS = ["1_pool", "2_cores", "3_assign", "4_rings", "5_denoise", "6_boundary", "7_compare"]


#: every AppTest run goes through app.py, as in a browser (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("through_app_py")


@pytest.fixture
def learn(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/learn.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figure(at):
    import json

    charts = at.get("plotly_chart")
    assert charts, "no chart drawn"
    return [json.loads(c.proto.spec) for c in charts]


def test_every_step_draws_its_layer(learn):
    at = learn
    names_by_step = {}
    for step in STEPS:
        at.session_state["learn_step"] = step
        at.run()
        assert not at.exception, (step, [e.value for e in at.exception])
        specs = _figure(at)
        names_by_step[step] = [t.get("name", "") for spec in specs for t in spec["data"]]
        assert at.markdown, step
    assert any(n.startswith("core samples") for n in names_by_step["2_cores"])
    assert any(n.startswith("centroid path") for n in names_by_step["2_cores"])  # ActiveFT trajectories
    assert any(n.startswith("removed as noise") for n in names_by_step["5_denoise"])
    assert any(n.startswith("BiLAF boundary picks") for n in names_by_step["6_boundary"])
    # the comparison shows BiLAF beside the baselines, and a summary table
    assert len(_figure(at)) >= 2
    table = at.dataframe[0].value
    assert "BiLAF" in set(table["method"])


def test_budget_slider_redraws_with_the_new_budget(learn):
    at = learn
    at.session_state["learn_step"] = "6_boundary"
    at.run()
    at.slider(key="learn_budget").set_value(20).run()
    assert not at.exception
    names = [t.get("name", "") for t in _figure(at)[0]["data"]]
    picks = [n for n in names if n.startswith("BiLAF boundary picks")][0]
    cores = at.slider(key="learn_cores").value
    assert picks.endswith(f"({20 - cores})")
    # next / previous buttons walk the steps
    at.button(key="learn_next").click().run()
    assert at.session_state["learn_step"] == "7_compare"
