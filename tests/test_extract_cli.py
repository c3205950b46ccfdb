"""``python -m bilaf_core extract``: output, cache, exit status 2 for bad input, torchrun/gloo sharding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bilaf_core.cli import main
from bilaf_core.features import extract_features, load_feature_set

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "synthetic", "--image-size", "32", "--limit", "96", "--batch-size", "16", "--quiet"]


def run_cli(capsys, *argv):
    code = main(["extract", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_extract_prints_the_folder_and_a_summary_then_serves_the_cache(tmp_path, capsys):
    code, out, err = run_cli(capsys, *SMALL, "--out", tmp_path / "fs")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == str(tmp_path / "fs")
    assert lines[1].startswith("96 x 112 features (efficientnet-lite0 blocks.4 at 32 px)") and "img/s on cpu" in lines[1]
    assert load_feature_set(tmp_path / "fs").n == 96
    code, out, _ = run_cli(capsys, *SMALL, "--out", tmp_path / "fs")
    assert code == 0 and out.splitlines()[1].startswith("cached: 96 x 112")


def test_default_output_is_the_workspace_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    code, out, err = run_cli(capsys, *SMALL)
    assert code == 0, err
    folder = Path(out.splitlines()[0])
    assert folder.parent == tmp_path / "ws" / "features" and (folder / "features.npy").is_file()


def test_skipped_images_are_reported_on_stderr(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_cli(capsys, "--dataset", "imagefolder", "--root", tmp_path / "imgs", "--image-size", "32",
                             "--quiet", "--out", tmp_path / "fs")
    assert code == 0 and "skipped 1 unreadable image(s)" in err and "bad.png" in err
    assert out.splitlines()[1].startswith("3 x 112")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet-22k"], "unknown dataset 'imagenet-22k'; known datasets: fashion-mnist, cifar10, cifar100, imagefolder, synthetic"),
    (["--backbone", "alexnet-9000"], "unknown backbone 'alexnet-9000'; known backbones: efficientnet-lite0, dino-vits16"),
    (["--dataset", "imagefolder"], "needs --root"),
    (["--dataset", "imagefolder", "--root", "{tmp}/missing"], "does not exist"),
    (["--dataset", "imagefolder", "--root", "{tmp}/empty"], "no images"),
    (["--dataset", "fashion-mnist", "--root", "{tmp}/empty"], "not found under"),
    (["--dataset", "cifar10", "--root", "{tmp}/empty"], "CIFAR-10 not found .* --download"),
    (["--dataset", "cifar100", "--root", "{tmp}/empty"], "CIFAR-100 not found"),
    (["--backbone", "dino-vits16"], "no local weights: pass --weights PATH .* --download"),
    (["--backbone", "resnet18"], "no local weights"),
    (["--weights", "{tmp}/none.pth"], "weights file .* does not exist"),
    (["--layer", "head9"], "valid layers: pooled, blocks.0"),
    (["--limit", "0"], "--limit must be a positive"),
    (["--image-size", "4"], "--image-size must be between"),
    (["--split", "validation"], "splits train, test"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--batch-size", "0"], "--batch-size must be a positive"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run_cli(capsys, "--quiet", "--limit", "8", *argv, "--out", tmp_path / "out")
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message.replace("{tmp}", str(tmp_path)), err), err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_cuda_without_cuda_exits_2(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = run_cli(capsys, *SMALL, "--device", "cuda", "--out", tmp_path / "fs")
    assert code == 2 and "CUDA is not available" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_gloo_processes_match_a_single_process(tmp_path):
    """``torch.distributed.run --nproc_per_node=2``: chunks dealt to 2 CPU ranks, rank 0 assembles."""
    common = dict(dataset="synthetic", backbone="efficientnet-lite0", image_size=32, limit=200, batch_size=16, chunk_size=32)
    single = extract_features(**common, out_dir=tmp_path / "single")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "bilaf_core", "extract", "--dataset", "synthetic",
               "--image-size", "32", "--limit", "200", "--batch-size", "16", "--chunk-size", "32", "--quiet",
               "--out", str(tmp_path / "ranks")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if line.strip()]
    assert printed[0] == str(tmp_path / "ranks") and len(printed) == 2  # rank 0 alone prints
    assert "x 2 processes" in printed[1]
    ranks = load_feature_set(tmp_path / "ranks")
    reference = load_feature_set(single)
    assert (tmp_path / "ranks" / "features.npy").read_bytes() == (single / "features.npy").read_bytes()
    assert ranks.ids == reference.ids and ranks.meta["labels"] == reference.meta["labels"]
    assert ranks.meta["key"] == reference.meta["key"]
