"""bench/gpu_check.py stays runnable without a GPU; the torch assignment path equals the numpy one.

* Without CUDA the script reports every check as skipped with the reason and exits 0, writing
  valid JSON (fast: in-process, with torch's CUDA check forced off so a GPU machine behaves the
  same).
* ``--cpu-smoke`` runs every check's real code (extraction, ActiveFT, faiss, the BiLAF CLI,
  finetuning, torchrun with gloo) at tiny sizes on the CPU (slow: many processes load torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bilaf_core.errors import BilafError
from bilaf_core.selection import _ops

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_without_a_gpu_every_check_is_skipped_with_the_reason(no_cuda, tmp_path, capsys):
    gpu_check = _load_script()
    out = tmp_path / "result.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["mode"] == "full"
    assert "no CUDA GPU" in result["no_gpu_reason"]
    assert [r["check"] for r in result["rows"]] == list(gpu_check.CHECKS)
    for row in result["rows"]:
        assert row["status"] == "skip" and row["measured"].startswith("skipped: no CUDA GPU")
    assert {c["status"] for c in result["checks"].values()} == {"skip"}
    header = result["header"]
    assert header["torch"] and header["python"] and header["numpy"] and "cores" in header["cpu"]
    printed = capsys.readouterr().out
    assert "GPU: none" in printed and printed.count("| skip |") == len(gpu_check.CHECKS)
    assert printed == result["table"] + "\n"


def test_only_picks_checks_and_rejects_unknown_names(no_cuda, tmp_path, capsys):
    gpu_check = _load_script()
    out = tmp_path / "some.json"
    assert gpu_check.main(["--only", "bilaf, faiss", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["check"] for r in result["rows"]] == ["faiss", "bilaf"]  # in the table's order
    assert result["mode"] == "quick"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--only", "bilaf,nccl"])
    assert exit_info.value.code == 2
    assert "unknown check(s) nccl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--quick", "--cpu-smoke"])


def test_torch_assignment_path_matches_numpy_including_ties():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 24)).astype(np.float32)
    centres = rng.normal(size=(40, 24)).astype(np.float32)
    centres[7] = centres[3]  # an exact duplicate: both paths must name the lower index
    x[:5] = centres[3] + 0.25  # rows whose nearest centre is that tied pair
    expected = _ops.nearest_rows(x, centres, chunk=700)
    # small blocks: several row blocks, one of them short
    got = _ops.nearest_rows_torch(x, centres, device="cpu", block_elements=40 * 512)
    assert np.array_equal(got[0], expected[0]) and np.all(got[0][:5] == 3)
    assert np.array_equal(got[2], expected[2]) and np.all(got[2][:5] == 7)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[3], expected[3], rtol=1e-4, atol=1e-5)
    single = _ops.nearest_rows_torch(x, centres[:1], device="cpu")
    assert np.all(single[0] == 0) and np.all(single[2] == -1) and np.all(np.isinf(single[3]))


def test_torch_gpu_device_choices(monkeypatch):
    assert _ops.torch_gpu_device("cpu") is None
    monkeypatch.setenv("BILAF_NO_GPU", "1")
    assert _ops.torch_gpu_device("auto") is None
    with pytest.raises(BilafError, match="unknown device 'tpu'"):
        _ops.torch_gpu_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BilafError, match="sees no CUDA GPU"):
            _ops.torch_gpu_device("cuda")


@pytest.mark.slow
@pytest.mark.timeout(2000)
def test_cpu_smoke_runs_every_check_at_tiny_sizes(tmp_path):
    """Every check's code path on the CPU: 4-8 minutes on 2 busy cores (torchrun alone 1.5-3 min)."""
    out = tmp_path / "smoke.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["mode"] == "cpu-smoke"
    assert {name: c["status"] for name, c in result["checks"].items()} == {name: "pass" for name in
                                                                          ("extract", "activeft", "faiss", "bilaf",
                                                                           "finetune", "ddp")}
    assert all(r["status"] == "ran" for r in result["rows"])
    by_check = {}
    for r in result["rows"]:
        by_check.setdefault(r["check"], []).append(r)
    assert len(by_check["extract"]) == 3 and len(by_check["activeft"]) == 2 and len(by_check["faiss"]) == 2
    assert len(by_check["bilaf"]) == 2 and len(by_check["finetune"]) == 1 and len(by_check["ddp"]) == 2
    # both faiss sides are the CPU build here: they must agree exactly
    assert all(" 0 of " in r["measured"] for r in by_check["faiss"])
    assert by_check["bilaf"][0]["measured"].startswith("0 nearest and 0 second-nearest")
    assert by_check["ddp"][0]["measured"].startswith("bit-identical")
    assert "world 2" in by_check["ddp"][1]["measured"]
    log = Path(str(out) + ".log").read_text()
    assert "===== ddp" in log and "torch.distributed.run" in log
