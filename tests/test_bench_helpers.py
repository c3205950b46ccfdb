"""Small pieces of the bench scripts that their tables rest on: the map-separation measure of
bench/backbone_goals.py, and bench/_script.run (bad input is one line and exit status 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bilaf_core.errors import BilafError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._script import run  # noqa: E402
from bench.backbone_goals import map_agreement  # noqa: E402


def test_map_agreement_is_one_for_separated_classes_and_low_for_mixed_ones():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], dtype=np.float32)
    separated = centres[labels] + rng.normal(scale=1.0, size=(200, 2)).astype(np.float32)
    assert map_agreement(separated, labels).mean() == 1.0
    mixed = rng.normal(size=(200, 2)).astype(np.float32)  # one blob, labels at random
    assert map_agreement(mixed, rng.permutation(labels)).mean() < 0.5


def test_map_agreement_leaves_the_point_itself_out():
    # with k = 1 a point whose nearest *other* point has another class disagrees; counting itself would agree
    coords = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]], dtype=np.float32)
    labels = np.array([1, 0, 0, 0])
    assert map_agreement(coords, labels, k=1).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_script_run_turns_bad_input_into_one_line_and_status_2(capsys):
    def bad():
        raise BilafError("--seeds 0 runs nothing")

    with pytest.raises(SystemExit) as exit_info:
        run(bad)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --seeds 0 runs nothing\n"
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: None)
    assert exit_info.value.code == 0
