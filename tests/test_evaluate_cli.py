"""`python -m bilaf_core evaluate`: summary line, --out, workspace record, exit status 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bilaf_core.cli import main
from bilaf_core.features import import_embeddings
from bilaf_core.finetune import EvalResult
from bilaf_core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))


def _import(folder: Path, name: str, features: np.ndarray, labels) -> Path:
    np.save(folder / f"{name}.npy", features)
    labels_path = folder / f"{name}-labels.json"
    labels_path.write_text(json.dumps(None if labels is None else np.asarray(labels).tolist()))
    return import_embeddings(folder / f"{name}.npy", labels_path=None if labels is None else labels_path, out_dir=folder / name)


@pytest.fixture()
def pool(tmp_path):
    """3 separable classes: a 150-sample pool, a 60-sample test set, 30 picks."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 12))
    labels = np.tile(np.arange(3), 70)
    features = (centres[labels] + rng.normal(0, 0.2, (210, 12))).astype(np.float32)
    pool = _import(tmp_path, "pool", features[:150], labels[:150])
    test = _import(tmp_path, "test", features[150:], labels[150:])
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps(list(range(30))))
    return pool, test, picks


def test_linear_probe_prints_writes_and_records(pool, tmp_path, capsys):
    features, test, picks = pool
    out = tmp_path / "result.json"
    code = main(["evaluate", "--features", str(features), "--picks", str(picks), "--test-features", str(test),
                 "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("linear-probe: 100.00% test top-1 (30 picks, 60 test samples")
    assert lines[1].split() == ["class", "accuracy", "test", "samples"] and len(lines) == 6
    assert lines[-1].startswith("recorded as eval-")
    result = EvalResult.from_dict(json.loads(out.read_text()))
    assert result.accuracy == 1.0 and result.n_train == 30
    workspace = Workspace()
    evaluations = workspace.list_evaluations()
    assert len(evaluations) == 1 and evaluations[0]["mode"] == "linear-probe" and evaluations[0]["accuracy"] == 1.0
    selections = workspace.list_selections()
    assert len(selections) == 1 and selections[0]["method"] == "imported" and selections[0]["budget"] == 30
    # the same picks again, with k-NN: recorded under the same selection
    assert main(["evaluate", "--features", str(features), "--picks", str(picks), "--test-features", str(test),
                 "--mode", "knn", "--k", "5", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("knn: 100.00% test top-1")
    assert len(workspace.list_selections()) == 1 and len(workspace.list_evaluations()) == 2


def test_no_record_and_holdout(pool, capsys):
    features, _, picks = pool
    assert main(["evaluate", "--features", str(features), "--picks", str(picks), "--no-record", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("linear-probe: ") and "120 test samples" in out and "recorded" not in out
    assert Workspace().list_evaluations() == []


@pytest.mark.parametrize(
    "picks,extra,message",
    [
        ([3, 7, 3], [], "pool index 3 is picked more than once"),
        ([0, 150], [], "pick 150 (position 1) is out of range"),
        ("{broken", [], "is not valid JSON"),
        ({"other": 1}, [], "must hold a JSON list of pool indices"),
        (None, [], "does not exist"),
        ([0, 1], ["--k", "3"], "--k is for --mode knn"),
        ([0, 1], ["--epochs", "3"], "--epochs is for --mode finetune"),
        ([0, 1], ["--mode", "knn", "--k", "0"], "k must be an integer >= 1"),
        ([0, 1], ["--mode", "finetune"], "imported embeddings"),
        ([0, 1], ["--test-features", "MISSING"], "is not a complete feature set"),
        ([0, 1], ["--features", "UNLABELLED"], "evaluation needs labels"),
    ],
)
def test_bad_input_exit_2_with_one_line(pool, tmp_path, capsys, picks, extra, message):
    features, _, _ = pool
    path = tmp_path / "bad-picks.json"
    if picks is not None:
        path.write_text(picks if isinstance(picks, str) else json.dumps(picks))
    replacements = {"MISSING": str(tmp_path / "absent"),
                    "UNLABELLED": str(_import(tmp_path, "bare", np.ones((10, 4), np.float32), None))}
    extra = [replacements.get(a, a) for a in extra]
    if "--features" not in extra:
        extra = ["--features", str(features), *extra]
    out = tmp_path / "out.json"
    code = main(["evaluate", "--picks", str(path), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
    assert not out.exists() and Workspace().list_evaluations() == []


def test_exit_status_of_the_process(pool, tmp_path):
    features, test, picks = pool
    ok = subprocess.run([sys.executable, "-m", "bilaf_core", "evaluate", "--features", str(features), "--picks", str(picks),
                         "--test-features", str(test), "--mode", "knn", "--no-record", "--quiet"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("knn: 100.00%"), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "bilaf_core", "evaluate", "--features", str(tmp_path / "none"),
                          "--picks", str(picks), "--no-record"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "is not a complete feature set" in bad.stderr
