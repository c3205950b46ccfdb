"""`python -m bilaf_core select`: outputs, and one clear message + exit 2 for each bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bilaf_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def pool(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (4, 8))
    x = np.concatenate([rng.normal(c, 0.5, (40, 8)) for c in centers]).astype(np.float32)
    path = tmp_path / "F.npy"
    np.save(path, x)
    cores = tmp_path / "core.json"
    cores.write_text(json.dumps([0, 40, 80, 120]))
    return path, cores


def test_select_writes_picks_and_diagnostics(pool, tmp_path, capsys):
    features, cores = pool
    out, diag = tmp_path / "picks.json", tmp_path / "diag.npz"
    code = main(["select", "--features", str(features), "--method", "bilaf", "--budget", "10%",
                 "--core-indices", str(cores), "--out", str(out), "--diagnostics", str(diag)])
    assert code == 0
    picks = json.loads(out.read_text())
    assert len(picks) == 16 and len(set(picks)) == 16 and {0, 40, 80, 120} <= set(picks)
    with np.load(diag) as d:
        assert d["cluster"].shape == (160,) and d["ring_level"].shape == (160,)
        assert d["indices"].tolist() == picks
    line = capsys.readouterr().out.strip()
    assert line.startswith("bilaf: 16 picks from 160 samples") and "denoise+boundary" in line and "wall" in line


@pytest.mark.parametrize(
    "mutate,args,message",
    [
        ("missing", [], "does not exist"),
        ("one_d", [], "must be a 2-D array"),
        ("nan", [], "NaN or infinite values in 1 of 160 rows"),
        ("truncated", [], "not a readable .npy"),
        (None, ["--budget", "0"], "at least 1"),
        (None, ["--budget", "161"], "larger than the pool"),
        (None, ["--budget", "abc"], "positive count"),
        (None, ["--budget", "3", "--core-indices", "CORES"], "smaller than the 4 core indices"),
        (None, ["--budget", "10", "--core-indices", "BAD_RANGE"], "out of range"),
        (None, ["--budget", "10", "--core-indices", "REPEATED"], "repeated"),
        (None, ["--budget", "10", "--core-indices", "NOT_JSON"], "not a JSON list"),
        (None, ["--budget", "10", "--core-budget", "20"], "smaller than the core count 20"),
        (None, ["--budget", "10", "--target-features", "MISSING"], "does not exist"),
    ],
)
def test_bad_input_exit_2_and_no_output(pool, tmp_path, capsys, mutate, args, message):
    features, cores = pool
    if mutate == "missing":
        features = tmp_path / "nope.npy"
    elif mutate == "one_d":
        np.save(features, np.zeros(5, np.float32))
    elif mutate == "nan":
        x = np.load(features)
        x[17, 3] = np.nan
        np.save(features, x)
    elif mutate == "truncated":
        data = features.read_bytes()
        features.write_bytes(data[: len(data) // 2])
    replacements = {
        "CORES": str(cores),
        "BAD_RANGE": _write(tmp_path / "r.json", [0, 999]),
        "REPEATED": _write(tmp_path / "d.json", [0, 0, 40]),
        "NOT_JSON": _write(tmp_path / "x.json", "{broken"),
        "MISSING": str(tmp_path / "absent.npy"),
    }
    args = [replacements.get(a, a) for a in args]
    if "--budget" not in args:
        args = ["--budget", "10"] + args
    out = tmp_path / "picks.json"
    code = main(["select", "--features", str(features), "--method", "bilaf", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def _write(path: Path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_option_the_method_does_not_take(pool, tmp_path, capsys):
    features, _ = pool
    code = main(["select", "--features", str(features), "--method", "random", "--budget", "5",
                 "--opponent-penalty", "1.2", "--out", str(tmp_path / "p.json")])
    assert code == 2 and "random does not take opponent_penalty" in capsys.readouterr().err


def test_whole_process_and_exit_status(pool, tmp_path):
    features, cores = pool
    out = tmp_path / "p.json"
    ok = subprocess.run([sys.executable, "-m", "bilaf_core", "select", "--features", str(features), "--method", "bilaf",
                         "--budget", "12", "--core-indices", str(cores), "--compat", "reference", "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(out.read_text())) == 12
    bad = subprocess.run([sys.executable, "-m", "bilaf_core", "select", "--features", str(tmp_path / "none.npy"),
                          "--method", "bilaf", "--budget", "12", "--out", str(tmp_path / "q.json")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and not (tmp_path / "q.json").exists()
