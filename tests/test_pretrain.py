"""Self-supervised pretraining: every method and architecture kind trains on a tiny pool, the
backbone folder works with extract and finetune, resume / cancel / determinism / labels-never-read,
and each bad input gets a clear message without losing work."""

from __future__ import annotations

import errno
import fcntl
import json

import numpy as np
import pytest
import torch

from bilaf_core import backbones as backbones_mod
from bilaf_core import pretrain as pretrain_mod
from bilaf_core.backbones import available_backbones, build_backbone, get_backbone_spec, resolve_weights
from bilaf_core.datasets import ArrayDataset, get_dataset
from bilaf_core.errors import BilafError, Cancelled
from bilaf_core.features import extract_features, load_feature_set
from bilaf_core.pretrain import CHECKPOINT_FILE, LOG_FILE, available_methods, pretrain

#: a few steps on generated shapes (32 px): the tiny CNN, 1 thread so runs are bit-comparable
TINY = dict(dataset="synthetic", arch="tiny-cnn", limit=48, batch_size=16, max_steps_per_epoch=2, threads=1)


def _weights(out) -> dict:
    config = json.loads((out / "backbone.json").read_text())
    return torch.load(out / config["weights_file"], map_location="cpu", weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["simclr", "byol", "vicreg"])
def test_each_method_writes_a_backbone_that_extract_uses(tmp_path, method):
    messages = []
    result = pretrain(**TINY, method=method, epochs=2, out_dir=tmp_path / "bb", command="test command",
                      progress=lambda f, m: messages.append((f, m)))
    out = tmp_path / "bb"
    assert result.backbone == f"pool:{out}" and result.epochs == 2 and not result.already_done
    config = json.loads((out / "backbone.json").read_text())
    assert (config["method"], config["arch"], config["timm_model"], config["epochs_done"]) == (method, "tiny-cnn", "bilaf_tiny_cnn", 2)
    assert (config["image_size"], config["feature_dim"], config["default_layer"]) == (32, 128, "pooled")
    log = json.loads((out / LOG_FILE).read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert all(np.isfinite(e["loss"]) and e["seconds"] > 0 and e["steps"] == 2 for e in log["epochs"])
    assert log["sessions"][0]["command"] == "test command" and log["sessions"][0]["device"].startswith("cpu")
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("ETA" in m and "loss" in m for _, m in messages)

    # extract uses it like any other backbone (pool:/path), with batch norms folded
    fs = load_feature_set(extract_features("synthetic", result.backbone, limit=40, out_dir=tmp_path / "fs"))
    assert fs.features.shape == (40, 128) and fs.meta["weights_source"] == "pretrained"
    assert fs.meta["backbone"] == result.backbone and fs.meta["image_size"] == 32
    import timm

    plain = timm.create_model("bilaf_tiny_cnn", num_classes=0)
    plain.load_state_dict(_weights(out))
    pixels = torch.from_numpy(get_dataset("synthetic", limit=40).images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = plain.eval()((pixels - mean) / std).numpy()
    np.testing.assert_allclose(fs.features, expected, rtol=1e-3, atol=1e-4)


def test_a_timm_architecture_trains_too(tmp_path):
    result = pretrain(**{**TINY, "arch": "test_vit", "limit": 16, "batch_size": 8, "max_steps_per_epoch": 1},
                      method="simclr", epochs=1, image_size=32, out_dir=tmp_path / "vit")
    spec = get_backbone_spec(result.backbone)
    assert spec.timm_name == "test_vit" and spec.fixed_input_size and spec.default_image_size == 32
    built = build_backbone(spec, resolve_weights(spec))
    with torch.inference_mode():
        assert built.module(torch.zeros(2, 3, 32, 32)).shape[0] == 2


def test_imagenet_init_continues_from_the_bundled_lite0_weights(tmp_path):
    from bilaf_core.backbones import bundled_lite0_path

    result = pretrain(dataset="synthetic", arch="efficientnet-lite0", init="imagenet", method="byol", epochs=1,
                      image_size=32, limit=8, batch_size=8, max_steps_per_epoch=1, threads=1, out_dir=tmp_path / "lite0")
    trained = _weights(result.out)
    imagenet = torch.load(bundled_lite0_path(), map_location="cpu", weights_only=True)
    stem, start = trained["conv_stem.weight"], imagenet["_conv_stem.weight"]
    assert not torch.equal(stem, start)  # it trained …
    assert (stem - start).abs().max() < 0.05 * start.abs().max()  # … from the ImageNet weights, one small step
    config = json.loads((result.out / "backbone.json").read_text())
    assert config["create_kwargs"] == {"bn_eps": 1e-3, "pad_type": "same"} and config["identity"]["init"]["kind"] == "imagenet"
    with pytest.raises(BilafError, match="--init imagenet needs ImageNet weights"):
        pretrain(**TINY, method="byol", epochs=1, init="imagenet", out_dir=tmp_path / "no-imagenet")


def test_finetune_builds_the_classifier_from_the_pretrained_weights(tmp_path):
    from bilaf_core.finetune import build_classifier

    result = pretrain(**TINY, method="vicreg", epochs=1, out_dir=tmp_path / "bb")
    spec = get_backbone_spec(result.backbone)
    model = build_classifier(spec, resolve_weights(spec), image_size=32, n_classes=4)
    trained = _weights(result.out)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_the_labels_are_never_read(tmp_path, monkeypatch):
    class NoLabels(ArrayDataset):
        def _forbidden(self, *args):
            raise AssertionError("pretraining read the labels")

        labels = property(_forbidden, lambda self, value: None)
        class_names = property(_forbidden, lambda self, value: None)

    real = get_dataset("synthetic", limit=48)
    unlabeled = NoLabels(name="synthetic", root=None, split="train", limit=48, images=real.images, labels=None, class_names=None)
    with pytest.raises(AssertionError):
        unlabeled.labels  # the guard works
    monkeypatch.setattr(pretrain_mod, "get_dataset", lambda *a, **k: unlabeled)
    for method in available_methods():
        result = pretrain(**TINY, method=method, epochs=1, out_dir=tmp_path / method)
        assert (result.out / "backbone.json").is_file()


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = pretrain(**TINY, method="byol", epochs=2, seed=3, out_dir=tmp_path / "a")
    b = pretrain(**TINY, method="byol", epochs=2, seed=3, out_dir=tmp_path / "b")
    c = pretrain(**TINY, method="byol", epochs=2, seed=4, out_dir=tmp_path / "c")
    assert _same(_weights(a.out), _weights(b.out))
    assert not _same(_weights(a.out), _weights(c.out))


def test_cancel_then_resume_gives_the_same_weights(tmp_path):
    reference = pretrain(**TINY, method="simclr", epochs=2, out_dir=tmp_path / "reference")

    def cancel_in_epoch_two(fraction, message):
        if "epoch 2/2" in message:
            raise Cancelled()

    out = tmp_path / "resumed"
    with pytest.raises(Cancelled):
        pretrain(**TINY, method="simclr", epochs=2, out_dir=out, progress=cancel_in_epoch_two)
    assert not (out / "backbone.json").exists() and not list(out.glob("weights-*.pth"))
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1
    assert not list(out.glob(".tmp-*"))  # nothing half-written

    resumed = pretrain(**TINY, method="simclr", epochs=2, out_dir=out)
    assert resumed.resumed_from_epoch == 1
    assert _same(_weights(out), _weights(reference.out))
    log = json.loads((out / LOG_FILE).read_text())
    assert [s["resumed_from_epoch"] for s in log["sessions"]] == [0, 1] and len(log["epochs"]) == 2

    again = pretrain(**TINY, method="simclr", epochs=2, out_dir=out)  # finished: returned at once
    assert again.already_done
    longer = pretrain(**TINY, method="simclr", epochs=3, out_dir=out)  # more epochs: extends it
    assert longer.resumed_from_epoch == 2 and json.loads((out / "backbone.json").read_text())["epochs_done"] == 3
    assert [p.name for p in out.glob("weights-*.pth")] == ["weights-3ep.pth"]
    with pytest.raises(BilafError, match="already holds this run trained for 3 epochs"):
        pretrain(**TINY, method="simclr", epochs=2, out_dir=out)


def test_a_folder_holding_another_run_is_refused(tmp_path):
    pretrain(**TINY, method="byol", epochs=1, out_dir=tmp_path / "bb")
    with pytest.raises(BilafError, match="other settings.*method 'byol' → 'vicreg'"):
        pretrain(**TINY, method="vicreg", epochs=1, out_dir=tmp_path / "bb")


def test_two_runs_on_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "bb"
    out.mkdir()
    with open(out / pretrain_mod.LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running pretrain holds
        held.write("pid 12345 on elsewhere")
        held.flush()
        with pytest.raises(BilafError, match="another pretrain run is writing .*pid 12345"):
            pretrain(**TINY, method="byol", epochs=1, out_dir=out)
    pretrain(**TINY, method="byol", epochs=1, out_dir=out)  # released: it runs


def test_bad_inputs_get_clear_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BilafError, match="no images"):
        pretrain("imagefolder", root=empty, arch="tiny-cnn", method="byol", epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="at least 2"):
        pretrain(**{**TINY, "limit": 1}, method="byol", epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="--image-size must be between"):
        pretrain(**TINY, method="byol", epochs=1, image_size=4, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="does not fit test_vit"):
        pretrain(**{**TINY, "arch": "test_vit"}, method="byol", epochs=1, image_size=30, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="unknown pretraining method 'mocov9'.*simclr, byol, vicreg"):
        pretrain(**TINY, method="mocov9", epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="unknown architecture 'resnet-9000'"):
        pretrain(**{**TINY, "arch": "resnet-9000"}, method="byol", epochs=1, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="--epochs must be at least 1"):
        pretrain(**TINY, method="byol", epochs=0, out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="--feature-layer"):
        pretrain(**TINY, method="byol", epochs=1, feature_layer="blocks.99", out_dir=tmp_path / "x")
    with pytest.raises(BilafError, match="no finished pretrained backbone"):
        get_backbone_spec(f"pool:{tmp_path / 'nothing-here'}")


def test_no_room_for_checkpoints(tmp_path, monkeypatch):
    real_usage = pretrain_mod.shutil.disk_usage
    monkeypatch.setattr(pretrain_mod.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1_000_000))
    with pytest.raises(BilafError, match=r"1 MB free but checkpoints need about"):
        pretrain(**TINY, method="byol", epochs=1, out_dir=tmp_path / "small-disk")
    monkeypatch.undo()

    # the disk fills up during the run: a clear message, the last checkpoint intact, resumable
    saves = []
    real_save = torch.save

    def fill_up(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    out = tmp_path / "fills-up"
    monkeypatch.setattr(torch, "save", fill_up)
    with pytest.raises(BilafError, match="no room left on the disk for the checkpoint.*resumes from the last finished epoch"):
        pretrain(**TINY, method="byol", epochs=2, out_dir=out)
    monkeypatch.undo()
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["epoch"] == 1 and not list(out.glob(".tmp-*"))
    assert pretrain(**TINY, method="byol", epochs=2, out_dir=out).resumed_from_epoch == 1


def test_workspace_backbones_are_listed_and_named_pool_name(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr(backbones_mod, "SHIPPED_BACKBONES_ROOT", tmp_path / "none-shipped")
    assert not [b for b in available_backbones() if b.startswith("pool:")]
    result = pretrain(**TINY, method="byol", epochs=1)  # default --out: <workspace>/backbones/<name>
    assert result.backbone == "pool:synthetic-tiny-cnn-byol-32px"
    assert result.out == tmp_path / "ws" / "backbones" / "synthetic-tiny-cnn-byol-32px"
    assert "pool:synthetic-tiny-cnn-byol-32px" in available_backbones()
    assert "pretrained on synthetic (byol, 1 epochs, tiny-cnn)" in get_backbone_spec(result.backbone).summary


def test_shipped_backbones_are_pool_names_and_a_workspace_folder_of_the_same_name_wins(tmp_path, monkeypatch):
    shipped_root = tmp_path / "shipped"
    pretrain(**TINY, method="simclr", epochs=1, out_dir=shipped_root / "made-here")
    (shipped_root / "unfinished").mkdir()  # no backbone.json: not listed
    monkeypatch.setattr(backbones_mod, "SHIPPED_BACKBONES_ROOT", shipped_root)
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    assert [b for b in available_backbones() if b.startswith("pool:")] == ["pool:made-here"]
    # an unfinished workspace run of the same name shadows it in the lookup, so not listed either
    (tmp_path / "ws" / "backbones" / "made-here").mkdir(parents=True)
    assert not [b for b in available_backbones() if b.startswith("pool:")]
    with pytest.raises(BilafError, match="holds no finished pretrained backbone"):
        get_backbone_spec("pool:made-here")
    (tmp_path / "ws" / "backbones" / "made-here").rmdir()
    assert [b for b in available_backbones() if b.startswith("pool:")] == ["pool:made-here"]
    spec = get_backbone_spec("pool:made-here")
    assert spec.weights_file.startswith(str(shipped_root / "made-here"))
    fs = load_feature_set(extract_features("synthetic", "pool:made-here", limit=8, out_dir=tmp_path / "fs"))
    assert fs.features.shape == (8, 128) and fs.meta["weights_source"] == "pretrained"
    # a workspace backbone of the same name shadows the shipped one, in the list and in the lookup
    pretrain(**TINY, method="byol", epochs=1, out_dir=tmp_path / "ws" / "backbones" / "made-here")
    assert [b for b in available_backbones() if b.startswith("pool:")] == ["pool:made-here"]
    assert "(byol," in get_backbone_spec("pool:made-here").summary


def test_augmentations_are_per_image_and_seeded():
    from bilaf_core.pretrain import METHODS, augment

    x = torch.rand(8, 3, 28, 28)
    for spec in METHODS.values():
        for view in spec.views:
            a = augment(x, 32, view, torch.Generator().manual_seed(1))
            b = augment(x, 32, view, torch.Generator().manual_seed(1))
            assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
            assert 0.0 <= a.min() and a.max() <= 1.0
    one = torch.rand(1, 3, 28, 28).expand(8, -1, -1, -1)
    views = augment(one, 28, METHODS["simclr"].views[0], torch.Generator().manual_seed(0))
    assert len({round(float(v.sum()), 3) for v in views}) == 8  # an independent draw per image


def test_cli_trains_prints_the_backbone_name_and_rejects_bad_input(tmp_path, capsys):
    from bilaf_core.cli import main
    from bilaf_core.commands.pretrain import METHOD_NAMES

    assert list(METHOD_NAMES) == available_methods()
    args = ["pretrain", "--dataset", "synthetic", "--limit", "32", "--arch", "tiny-cnn", "--method", "vicreg",
            "--epochs", "1", "--batch-size", "16", "--threads", "1", "--out", str(tmp_path / "cli"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"pool:{tmp_path / 'cli'}" in printed and "1 epochs of vicreg" in printed
    log = json.loads((tmp_path / "cli" / LOG_FILE).read_text())
    assert "pretrain" in log["sessions"][0]["command"]
    assert main(args) == 0 and "already trained" in capsys.readouterr().out
    assert main([*args[:-3], "--image-size", "3", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--image-size must be between" in capsys.readouterr().err


def test_app_job_runs_and_dedupes_by_folder(tmp_path):
    from bilaf_core.jobs import JobManager, submit_pretrain

    manager = JobManager(tmp_path / "jobs")
    try:
        options = dict(dataset="synthetic", limit=32, arch="tiny-cnn", method="simclr", epochs=1, out_dir=tmp_path / "bb")
        first = submit_pretrain(manager, **options)
        assert submit_pretrain(manager, **options) == first  # same folder while running: the same job
        record = manager.wait(first, timeout=300)
        assert record["status"] == "done", record
        assert record["result"]["backbone"] == f"pool:{tmp_path / 'bb'}" and record["kind"] == "pretrain"
        log = json.loads((tmp_path / "bb" / LOG_FILE).read_text())
        assert log["sessions"][0]["command"].startswith("python -m bilaf_core pretrain --dataset synthetic --limit 32")
    finally:
        manager.shutdown()


@pytest.mark.slow  # two torchrun launches of two processes each: ~1 min on a quiet 2-core machine
def test_torchrun_two_gloo_processes_train_one_backbone(tmp_path):
    """``torch.distributed.run --nproc_per_node=2``: the batch is split over 2 CPU ranks (losses
    gathered), rank 0 writes; repeating the command returns the finished backbone on every rank."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "bilaf_core", "pretrain", "--dataset", "synthetic", "--limit", "32",
               "--arch", "tiny-cnn", "--method", "simclr", "--epochs", "1", "--batch-size", "16", "--threads", "1",
               "--quiet", "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for attempt in ("train", "finished"):
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        printed = [line for line in result.stdout.splitlines() if line.strip()]
        assert printed[0] == str(tmp_path / "ddp") and len(printed) == 2  # rank 0 alone prints
    assert "already trained" in printed[1]
    log = json.loads((tmp_path / "ddp" / LOG_FILE).read_text())
    assert log["sessions"][0]["device"] == "cpu (1 thread) x 2 processes" and log["epochs"][0]["images"] == 32
    assert extract_features("synthetic", f"pool:{tmp_path / 'ddp'}", limit=8, out_dir=tmp_path / "fs").is_dir()


def test_training_up_to_a_layer_keeps_the_later_layers_and_extracts_that_layer(tmp_path):
    from bilaf_core.pretrain import architecture_spec, build_network

    result = pretrain(**TINY, method="byol", epochs=1, feature_layer="stages.1", out_dir=tmp_path / "cut")
    config = json.loads((result.out / "backbone.json").read_text())
    assert (config["default_layer"], config["feature_dim"]) == ("stages.1", 64)
    trained = _weights(result.out)
    start = build_network(architecture_spec("tiny-cnn"), "random", 32, seed=0)[0].state_dict()
    assert set(trained) == set(start)  # the whole network is saved …
    assert torch.equal(trained["stages.2.0.0.weight"], start["stages.2.0.0.weight"])  # … after the layer: untouched
    assert not torch.equal(trained["stages.0.0.0.weight"], start["stages.0.0.0.weight"])  # before it: trained
    fs = load_feature_set(extract_features("synthetic", result.backbone, limit=16, out_dir=tmp_path / "fs"))
    assert fs.meta["layer"] == "stages.1" and fs.dim == 64


def test_evaluate_finetune_runs_on_features_of_a_pretrained_backbone(tmp_path, monkeypatch):
    """extract → evaluate --mode finetune: the backbone is rebuilt from meta["backbone"] (pool:…)
    with its own weights, the test split extracted with the same backbone."""
    from bilaf_core.finetune import evaluate_selection

    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    result = pretrain(**TINY, method="simclr", epochs=1, out_dir=tmp_path / "bb")
    pool = extract_features("synthetic", result.backbone, limit=64, out_dir=tmp_path / "fs")
    evaluation = evaluate_selection(pool, np.arange(32), "finetune", seed=0, checkpoint_dir=tmp_path / "ckpt",
                                    epochs=1, image_size=32, batch_size=16, device="cpu", num_workers=0)
    assert evaluation.params["backbone"] == result.backbone and evaluation.params["weights_digest"].startswith("sha256:")
    assert evaluation.params["test_set"] == "synthetic test split (100 samples)" and 0.0 <= evaluation.accuracy <= 1.0
