"""Evaluation of a selection (bilaf_core.finetune): linear probe, k-NN, finetune, picks checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bilaf_core.errors import BilafError, Cancelled
from bilaf_core.features import import_embeddings
from bilaf_core.finetune import EvalResult, evaluate_selection, knn_predict, scores_from_predictions, validate_picks


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "workspace"))


def _blobs(n_per_class: int, n_classes: int, dim: int, *, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian clusters (one per class), interleaved so any prefix is balanced."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim))
    labels = np.tile(np.arange(n_classes), n_per_class)
    features = centres[labels] + rng.normal(0, spread, (len(labels), dim))
    return features.astype(np.float32), labels


def _import(tmp_path, name, features, labels) -> str:
    np.save(tmp_path / f"{name}.npy", features)
    labels_path = tmp_path / f"{name}-labels.json"
    labels_path.write_text(json.dumps(np.asarray(labels).tolist()))
    return str(import_embeddings(tmp_path / f"{name}.npy", labels_path=labels_path, out_dir=tmp_path / name))


@pytest.fixture()
def separable(tmp_path):
    """A 600-sample pool of 5 separable classes and a 500-sample test set from the same clusters."""
    features, labels = _blobs(220, 5, 16, seed=0)
    pool = _import(tmp_path, "pool", features[:600], labels[:600])
    test = _import(tmp_path, "test", features[600:], labels[600:])
    return pool, test


@pytest.mark.parametrize("mode", ["linear-probe", "knn"])
def test_separable_data_gives_high_accuracy(separable, mode):
    pool, test = separable
    result = evaluate_selection(pool, np.arange(0, 100), mode, test_feature_dir=test)
    assert result.accuracy > 0.95
    assert result.n_train == 100 and result.mode == mode
    assert len(result.per_class) == 5 and all(v > 0.9 for v in result.per_class)
    confusion = np.asarray(result.confusion)
    assert confusion.shape == (5, 5) and confusion.sum() == 500
    assert np.trace(confusion) / 500 == pytest.approx(result.accuracy)
    assert result.class_names == ["0", "1", "2", "3", "4"]
    assert result.params["test_set"].startswith("features: ") and result.timings["total"] > 0
    json.dumps(result.to_dict())  # JSON-able as it is


@pytest.mark.parametrize("mode", ["linear-probe", "knn"])
def test_shuffled_labels_give_chance(tmp_path, mode):
    """Labels unrelated to the features: no classifier can beat chance (1/4) on the test set."""
    features, _ = _blobs(500, 4, 16, seed=1)
    labels = np.random.default_rng(2).integers(0, 4, len(features))
    pool = _import(tmp_path, "pool", features[:1000], labels[:1000])
    test = _import(tmp_path, "test", features[1000:], labels[1000:])
    result = evaluate_selection(pool, np.arange(400), mode, test_feature_dir=test)
    assert 0.25 - 0.07 < result.accuracy < 0.25 + 0.07


def test_holdout_when_no_test_split(tmp_path):
    features, labels = _blobs(50, 3, 8, seed=3)
    pool = _import(tmp_path, "pool", features, labels)
    picks = [0, 1, 2, 3, 4, 5]
    result = evaluate_selection(pool, picks, "linear-probe")
    assert result.params["test_set"] == "pool-holdout: 144 unpicked samples"
    assert int(np.sum(result.confusion)) == 144 and result.accuracy > 0.9


def test_single_class_picks_predict_that_class(separable):
    pool, test = separable
    picks = np.arange(0, 50, 5)  # every 5th sample: all of class 0
    for mode in ("linear-probe", "knn"):
        result = evaluate_selection(pool, picks, mode, test_feature_dir=test)
        assert result.accuracy == pytest.approx(0.2)
        assert result.per_class == [1.0, 0.0, 0.0, 0.0, 0.0]
        assert result.params["classes_in_picks"] == 1


def test_linear_probe_is_deterministic_and_knn_caps_k(separable):
    pool, test = separable
    first = evaluate_selection(pool, np.arange(30), "linear-probe", test_feature_dir=test, seed=5)
    second = evaluate_selection(pool, np.arange(30), "linear-probe", test_feature_dir=test, seed=5)
    assert first.confusion == second.confusion and first.params["seed"] == 5
    knn = evaluate_selection(pool, np.arange(7), "knn", test_feature_dir=test, k=50)
    assert knn.params["k"] == 7 and knn.params["k_requested"] == 50


def test_result_round_trips_and_absent_class_is_none():
    accuracy, per_class, confusion = scores_from_predictions(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    assert accuracy == pytest.approx(2 / 3) and per_class == [0.5, 1.0, None]
    result = EvalResult("knn", accuracy, per_class, confusion, ["a", "b", "c"], 3, {"k": 3}, {"total": 0.1})
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert EvalResult.from_dict(json.loads(text)) == result


def test_knn_weighted_vote_prefers_closer_neighbours():
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]], dtype=np.float32)
    # two far votes for class 1 against one exact match for class 0: exp weighting lets the match win
    predicted = knn_predict(train, np.array([0, 1, 1]), np.array([[1.0, 0.0]], dtype=np.float32), k=3)
    assert predicted.tolist() == [0]


@pytest.mark.parametrize(
    "picks,message",
    [
        ([3, 7, 3, 9, 7], "pool index 3 is picked more than once (again at position 2)"),
        ([0, 600], "pick 600 (position 1) is out of range"),
        ([-1, 2], "pick -1 (position 0) is out of range"),
        ([], "the selection is empty"),
        ([[1, 2]], "flat list"),
        (["a"], "integer pool indices"),
        ([0.5], "integer pool indices"),
    ],
)
def test_bad_picks_are_rejected(separable, picks, message):
    pool, test = separable
    with pytest.raises(BilafError) as info:
        evaluate_selection(pool, picks, "linear-probe", test_feature_dir=test)
    assert message in str(info.value)


def test_validate_picks_accepts_arrays_and_integral_floats():
    assert validate_picks(np.array([2, 0, 1]), 3).tolist() == [2, 0, 1]
    assert validate_picks([1.0, 2.0], 3).dtype == np.int64


def test_inputs_are_checked(tmp_path, separable):
    pool, test = separable
    np.save(tmp_path / "unlabelled.npy", np.ones((10, 4), np.float32))
    bare = import_embeddings(tmp_path / "unlabelled.npy", out_dir=tmp_path / "bare")
    with pytest.raises(BilafError, match="evaluation needs labels.*labels file"):
        evaluate_selection(bare, [0, 1], "linear-probe")
    other_dim = _import(tmp_path, "other", np.ones((10, 3), np.float32), np.zeros(10, np.int64))
    with pytest.raises(BilafError, match="3 dimensions but the pool has 16"):
        evaluate_selection(pool, [0, 1], "knn", test_feature_dir=other_dim)
    with pytest.raises(BilafError, match="unknown evaluation mode"):
        evaluate_selection(pool, [0, 1], "svm")
    with pytest.raises(BilafError, match="does not take option"):
        evaluate_selection(pool, [0, 1], "knn", test_feature_dir=test, epochs=3)
    with pytest.raises(BilafError, match="k must be an integer"):
        evaluate_selection(pool, [0, 1], "knn", test_feature_dir=test, k=0)
    small = _import(tmp_path, "small", np.eye(3, dtype=np.float32), [0, 1, 2])
    with pytest.raises(BilafError, match="none is left to test on"):
        evaluate_selection(small, [0, 1, 2], "knn")


def test_progress_is_reported_and_cancel_propagates(separable):
    pool, test = separable
    seen = []
    evaluate_selection(pool, np.arange(50), "linear-probe", test_feature_dir=test, progress=lambda f, m: seen.append(f))
    assert seen and all(0.0 <= f <= 1.0 for f in seen) and seen[-1] == 1.0

    def cancel(fraction, message):
        if fraction > 0.3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        evaluate_selection(pool, np.arange(50), "linear-probe", test_feature_dir=test, progress=cancel)


# ---------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_pool(tmp_path_factory):
    """Features of the synthetic dataset's 400 training images (EfficientNet-Lite0 at 32 px)."""
    from bilaf_core.features import extract_features

    root = tmp_path_factory.mktemp("synthetic")
    return extract_features("synthetic", image_size=32, device="cpu", cache_root=root / "features")


# 8 picks per class, image size 32, one epoch of 2 steps: seconds on a CPU
TINY = dict(epochs=1, image_size=32, batch_size=16, device="cpu", num_workers=0)


def test_finetune_one_tiny_epoch_writes_checkpoint(synthetic_pool, tmp_path):
    import torch

    picks = np.arange(32)
    seen = []
    result = evaluate_selection(synthetic_pool, picks, "finetune", seed=3, checkpoint_dir=tmp_path / "ckpt",
                                progress=lambda f, m: seen.append((f, m)), **TINY)
    assert result.mode == "finetune" and result.n_train == 32 and 0.0 <= result.accuracy <= 1.0
    assert np.asarray(result.confusion).sum() == 100  # the synthetic test split
    params = result.params
    assert params["preset"] == "cpu-quick" and params["epochs"] == 1 and params["image_size"] == 32
    assert params["test_set"] == "synthetic test split (100 samples)" and params["steps"] == 2
    assert "final model" in params["evaluated"] and params["world_size"] == 1
    assert {"model", "train", "test", "checkpoint", "total"} <= set(result.timings)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    assert any("epoch 1/1, step 2/2" in m for _, m in seen)
    checkpoint = torch.load(tmp_path / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["class_names"] == result.class_names and checkpoint["picks"] == picks.tolist()
    assert checkpoint["model"]["classifier.weight"].shape == (4, 1280)
    saved = EvalResult.from_dict(json.loads((tmp_path / "ckpt" / "result.json").read_text()))
    assert saved == result
    assert params["checkpoint"] == str(tmp_path / "ckpt" / "checkpoint.pt")


def test_finetune_default_checkpoint_in_workspace_and_given_test_set(synthetic_pool, tmp_path):
    test_dir = tmp_path / "test-features"
    (test_dir).mkdir()
    # a labelled "test set" given as features: its images are reopened from its meta
    from bilaf_core.features import extract_features

    given = extract_features("synthetic", split="test", image_size=32, device="cpu", out_dir=test_dir, limit=20)
    result = evaluate_selection(synthetic_pool, [0, 1, 2, 3, 4, 5], "finetune", test_feature_dir=given, **TINY)
    assert np.asarray(result.confusion).sum() == 20 and result.params["test_set"].startswith("images of ")
    checkpoints = list((tmp_path / "workspace" / "checkpoints").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 1 and checkpoints[0].parent.name.startswith(synthetic_pool.name + "-cpu-quick-")


def test_finetune_on_image_files_tests_on_unpicked_pool(tmp_path):
    """An image folder without a test split: picked files are decoded, the rest is the test set."""
    from PIL import Image

    from bilaf_core.datasets import SYNTHETIC_CLASSES, make_synthetic
    from bilaf_core.features import extract_features

    images, labels = make_synthetic(16, seed=5)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "photos" / SYNTHETIC_CLASSES[label].replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    pool = extract_features("imagefolder", root=tmp_path / "photos", image_size=32, device="cpu", out_dir=tmp_path / "f")
    result = evaluate_selection(pool, [0, 4, 8, 12, 1, 5], "finetune", checkpoint_dir=tmp_path / "ckpt", **TINY)
    assert result.params["test_set"] == "pool-holdout: 10 unpicked samples"
    assert np.asarray(result.confusion).sum() == 10 and (tmp_path / "ckpt" / "checkpoint.pt").is_file()


def test_cancelled_finetune_leaves_no_checkpoint(synthetic_pool, tmp_path):
    def cancel(fraction, message):
        if message.startswith("finetune: epoch"):
            raise Cancelled()

    with pytest.raises(Cancelled):
        evaluate_selection(synthetic_pool, np.arange(32), "finetune", checkpoint_dir=tmp_path / "ckpt",
                           progress=cancel, **TINY)
    assert not (tmp_path / "ckpt").exists()


def test_finetune_input_errors(synthetic_pool, separable):
    pool, _ = separable
    with pytest.raises(BilafError, match="imported embeddings.*linear-probe or knn"):
        evaluate_selection(pool, [0, 1], "finetune")
    with pytest.raises(BilafError, match="unknown finetune preset 'fast'"):
        evaluate_selection(synthetic_pool, [0, 1], "finetune", preset="fast")
    with pytest.raises(BilafError, match="--preset is for --mode finetune"):
        evaluate_selection(synthetic_pool, [0, 1], "linear-probe", preset="paper")
    with pytest.raises(BilafError, match="epochs must be an integer >= 1"):
        evaluate_selection(synthetic_pool, [0, 1], "finetune", epochs=0)
    with pytest.raises(BilafError, match="does not take option.*k"):
        evaluate_selection(synthetic_pool, [0, 1], "finetune", k=3)
    with pytest.raises(BilafError, match="pool index 1 is picked more than once"):
        evaluate_selection(synthetic_pool, [1, 1], "finetune")


def test_random_resized_crop_full_image_is_identity_and_flip_mirrors():
    import torch

    from bilaf_core.finetune import center_crop_resize, random_resized_crop

    x = torch.rand(3, 3, 16, 16)
    same = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, interpolation="bilinear")
    assert torch.allclose(same, x, atol=1e-5)
    mirrored = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, interpolation="bilinear")
    assert torch.allclose(mirrored, x.flip(-1), atol=1e-5)
    crops = random_resized_crop(x, 8, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(0))
    again = random_resized_crop(x, 8, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 8, 8) and torch.equal(crops, again)
    assert crops.min() >= 0 and crops.max() <= 1
    centre = center_crop_resize(x, 8, fraction=0.5)
    assert torch.allclose(centre, x[:, :, 4:12, 4:12])


def test_test_transform_at_the_images_own_size_takes_grey_images_expanded_to_three_channels():
    # Finetuning Fashion-MNIST at 28 px crashed after training, when it predicted the test split:
    # the grey batch is one channel expanded to three (a view) and was clamped in place.
    import torch

    from bilaf_core.finetune import _pixels_to_tensor, center_crop_resize

    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    x = _pixels_to_tensor(pixels, "cpu")
    out = center_crop_resize(x, 28)
    assert out.shape == (4, 3, 28, 28)
    assert torch.equal(out[:, 0], torch.from_numpy(pixels).float() / 255.0)
    assert torch.equal(center_crop_resize(x, 14, fraction=0.5), out[:, :, 7:21, 7:21])


def test_min_steps_raises_the_epochs_so_the_training_length_follows_the_budget(synthetic_pool, tmp_path):
    import dataclasses

    from bilaf_core.finetune import PRESETS

    quick = dataclasses.replace(PRESETS["cpu-quick"], min_steps=300)  # batch 64
    assert [quick.for_picks(n).epochs for n in (100, 600, 1200, 5000)] == [150, 30, 16, 8]  # never below 8 epochs
    assert PRESETS["cpu-quick"].for_picks(100).epochs == 8  # min_steps 0: the preset as it is
    paper = dataclasses.replace(PRESETS["paper"], min_steps=3000)  # 256-view epochs of batch 512: 1 step each
    # 250 picks: one 256-view epoch is 1 step, so 3000 epochs; 10 000 picks: 20 steps an epoch, and the preset's
    # 1000 epochs already give more than 3000 steps
    assert paper.for_picks(250).epochs == 3000 and paper.for_picks(10_000).epochs == 1000
    # in a run: 32 picks at batch 16 are 2 steps an epoch, so min_steps 5 makes 3 epochs, 6 steps
    options = {**TINY, "min_steps": 5}
    result = evaluate_selection(synthetic_pool, np.arange(32), "finetune", seed=1, checkpoint_dir=tmp_path / "c", **options)
    assert result.params["epochs"] == 3 and result.params["steps"] == 6 and result.params["min_steps"] == 5
    with pytest.raises(BilafError, match="min_steps must be an integer >= 0"):
        evaluate_selection(synthetic_pool, [0, 1], "finetune", min_steps=-1)


def test_learning_rate_schedule():
    from bilaf_core.finetune import PRESETS, learning_rate

    paper = PRESETS["paper"]
    assert learning_rate(0, paper) == pytest.approx(1e-6)
    assert learning_rate(2.5, paper) == pytest.approx(1e-6 + (3e-3 - 1e-6) / 2)
    assert learning_rate(paper.epochs, paper) == pytest.approx(1e-5)
    assert learning_rate(paper.epochs / 2, paper) == pytest.approx((3e-3 + 1e-5) / 2)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_with_gloo(synthetic_pool, tmp_path):
    """DDP: 2 CPU processes (gloo) shard 40 picks, 20 each in batches of 8; rank 0 alone writes.

    Slow: two processes each load torch and timm (about 30 s on 2 busy cores)."""
    from bilaf_core.workspace import Workspace

    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps(list(range(40))))
    out = tmp_path / "result.json"
    env = dict(os.environ, BILAF_WORKSPACE=str(tmp_path / "ws"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "bilaf_core.finetune", "--features", str(synthetic_pool), "--picks", str(picks), "--epochs", "1",
               "--image-size", "32", "--batch-size", "16", "--device", "cpu", "--workers", "0",
               "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(out), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = EvalResult.from_dict(json.loads(out.read_text()))
    assert result.params["world_size"] == 2 and result.params["steps"] == 3 and result.n_train == 40
    assert np.asarray(result.confusion).sum() == 100
    assert done.stdout.count("finetune: ") == 1 and done.stdout.count("recorded as") == 1
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    assert len(Workspace(tmp_path / "ws").list_evaluations()) == 1


def test_epoch_plans_plain_and_repeated_augmentation():
    import dataclasses

    from bilaf_core.finetune import PRESETS, _epoch_batches

    quick = dataclasses.replace(PRESETS["cpu-quick"], epochs=2)
    plan = _epoch_batches(9, quick, 4, 1, 0, seed=0)
    assert [len(b) for b in plan[0]] == [4, 5]  # a trailing batch of one joins the one before
    assert sorted(np.concatenate(plan[0]).tolist()) == list(range(9))
    assert not np.array_equal(np.concatenate(plan[0]), np.concatenate(plan[1]))  # reshuffled per epoch
    paper = dataclasses.replace(PRESETS["paper"], epochs=1)
    # 50 picks, 2 processes: 3 copies of each pick, dealt alternately; fewer than 256 views in all
    ranks = [np.concatenate(_epoch_batches(50, paper, 256, 2, rank, seed=0)[0]) for rank in (0, 1)]
    assert [len(r) for r in ranks] == [75, 75]
    assert np.bincount(np.concatenate(ranks), minlength=50).tolist() == [3] * 50
    # 600 picks: the epoch is cut to 256 * (600 // 256) = 512 views, 256 per process
    assert [len(np.concatenate(_epoch_batches(600, paper, 256, 2, rank, seed=0)[0])) for rank in (0, 1)] == [256, 256]


def test_folded_test_copy_matches_the_trained_model():
    import torch

    from bilaf_core.backbones import WeightsSource, get_backbone_spec
    from bilaf_core.finetune import build_classifier, fold_batchnorm_copy

    model = build_classifier(get_backbone_spec("efficientnet-lite0"), WeightsSource("random", "random-init:seed0"),
                             image_size=32, n_classes=3, seed=1)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # moves the running statistics away from their init
    folded = fold_batchnorm_copy(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(x)
        assert torch.allclose(folded(x), expected, atol=1e-4, rtol=1e-4)
    assert model.get_classifier().weight.shape == (3, 1280)


def test_cancel_at_the_very_end_still_writes_nothing(synthetic_pool, tmp_path):
    def cancel_when_done(fraction, message):
        if fraction >= 1.0:
            raise Cancelled()

    with pytest.raises(Cancelled):
        evaluate_selection(synthetic_pool, np.arange(8), "finetune", checkpoint_dir=tmp_path / "ckpt",
                           progress=cancel_when_done, **TINY)
    assert not (tmp_path / "ckpt").exists()


def test_concurrent_evaluations_share_one_test_split_extraction(synthetic_pool):
    """Two threads evaluating the same pool: one extracts the synthetic test split, the other waits
    for it and reads the cache (unlocked, two extractions into one cache folder can collide)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool_of_threads:
        results = list(pool_of_threads.map(lambda picks: evaluate_selection(synthetic_pool, picks, "knn", k=3),
                                           [np.arange(0, 40), np.arange(40, 80)]))
    assert [r.params["test_set"] for r in results] == ["synthetic test split (100 samples)"] * 2
    assert all(np.asarray(r.confusion).sum() == 100 for r in results)


def test_paper_preset_on_a_vit_with_random_weights(tmp_path):
    """The paper recipe's code path (ViT, drop path, repeated augmentation, resize-crop test
    transform) at 32 px with random DINO ViT-S/16 weights: the default preset for dino-vits16."""
    from bilaf_core.features import extract_features

    pool = extract_features("synthetic", "dino-vits16", weights="random", image_size=32, limit=40, device="cpu",
                            out_dir=tmp_path / "vit")
    result = evaluate_selection(pool, np.arange(0, 40, 2), "finetune", weights="random", epochs=1, image_size=32,
                                batch_size=32, device="cpu", checkpoint_dir=tmp_path / "ckpt")
    params = result.params
    assert params["preset"] == "paper" and params["repeated_augmentation"] == 3 and params["drop_path"] == 0.1
    assert params["steps"] == 2  # 20 picks x 3 copies = 60 views, batches of 32
    assert params["test_set"] == "synthetic test split (100 samples)"
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
