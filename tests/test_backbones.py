"""Backbone registry: the bundled EfficientNet-Lite0 mapping, checkpoint loading, layers, errors."""

from __future__ import annotations

import pytest
import torch

from bilaf_core.backbones import (
    available_backbones,
    available_layers,
    build_backbone,
    bundled_lite0_path,
    get_backbone_spec,
    load_checkpoint,
    map_lite0_state_dict,
    resolve_weights,
)
from bilaf_core.errors import BilafError


@pytest.fixture(scope="module")
def lite0_source():
    return torch.load(bundled_lite0_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_timm():
    import timm

    spec = get_backbone_spec("efficientnet-lite0")
    return timm.create_model(spec.timm_name, pretrained=False, **dict(spec.create_kwargs))


def test_registry_lists_the_offline_default_and_the_papers_backbone():
    assert available_backbones()[:2] == ["efficientnet-lite0", "dino-vits16"]
    assert get_backbone_spec("dino-vits16").timm_name == "vit_small_patch16_224.dino"
    assert get_backbone_spec("resnet18").timm_name == "resnet18"  # any timm name works


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(BilafError, match="efficientnet-lite0, dino-vits16"):
        get_backbone_spec("not-a-backbone")


def test_lite0_mapping_every_tensor_matches_in_shape_and_kind(lite0_source, lite0_timm):
    target = lite0_timm.state_dict()
    assert len(lite0_source) == len(target) == 296
    mapped = map_lite0_state_dict(lite0_source, target)
    assert list(mapped) == list(target)  # complete, same order
    for (src_key, src), (dst_key, dst) in zip(lite0_source.items(), target.items()):
        assert tuple(src.shape) == tuple(dst.shape), (src_key, dst_key)
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        assert mapped[dst_key] is src
    result = lite0_timm.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(lite0_timm.conv_stem.weight, lite0_source["_conv_stem.weight"])
    assert torch.equal(lite0_timm.blocks[4][0].conv_pw.weight, lite0_source["_blocks.8._expand_conv.weight"])
    assert torch.equal(lite0_timm.classifier.bias, lite0_source["_fc.bias"])


def test_lite0_mapping_refuses_a_misaligned_state_dict(lite0_source, lite0_timm):
    keys = list(lite0_source)
    shuffled = {k: lite0_source[k] for k in keys[1:] + keys[:1]}
    with pytest.raises(BilafError, match="does not fit"):
        map_lite0_state_dict(shuffled, lite0_timm.state_dict())
    with pytest.raises(BilafError, match="tensors"):
        map_lite0_state_dict(dict(list(lite0_source.items())[:-2]), lite0_timm.state_dict())


def test_bundled_weights_are_local_and_digested():
    spec = get_backbone_spec("efficientnet-lite0")
    source = resolve_weights(spec)
    assert source.kind == "bundled" and source.path.is_file() and source.path.suffix == ".pth"
    assert "site-packages" in str(source.path)
    assert source.digest.startswith("sha256:57934424")


def test_default_lite0_backbone_gives_the_112_channel_stage():
    spec = get_backbone_spec("efficientnet-lite0")
    backbone = build_backbone(spec, resolve_weights(spec))
    assert (backbone.layer, backbone.image_size, backbone.tensors_loaded) == ("blocks.4", 64, 296)
    with torch.inference_mode():
        assert backbone.module(torch.zeros(2, 3, 64, 64)).shape == (2, 112)
    pooled = build_backbone(spec, resolve_weights(spec), layer="pooled", image_size=32)
    with torch.inference_mode():
        assert pooled.module(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)


def test_folding_batchnorm_keeps_the_features():
    import dataclasses

    spec = get_backbone_spec("efficientnet-lite0")
    assert spec.fold_batchnorm and "folded-bn" in spec.variant()
    folded = build_backbone(spec, resolve_weights(spec), layer="pooled")
    plain = build_backbone(dataclasses.replace(spec, fold_batchnorm=False), resolve_weights(spec), layer="pooled")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.module.model.modules())
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        a, b = folded.module(x), plain.module(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_layer_lists_the_valid_ones():
    spec = get_backbone_spec("efficientnet-lite0")
    with pytest.raises(BilafError) as info:
        build_backbone(spec, resolve_weights(spec, "random"), layer="blocks.99")
    assert "pooled, blocks.0" in str(info.value) and "blocks.6" in str(info.value)


def _vit_state(image_size=32):
    import timm

    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=image_size)
    return model, model.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "teacher", "model", "state_dict_module"])
def test_checkpoint_wrappers_and_prefixes_are_handled(tmp_path, wrap):
    model, state = _vit_state()
    if wrap == "teacher":  # DINO's full checkpoint: {"teacher": {"module.backbone.x", "module.head.x"}}
        obj = {"teacher": {**{f"module.backbone.{k}": v for k, v in state.items()},
                           "module.head.mlp.0.weight": torch.zeros(3, 3)}, "epoch": 100}
    elif wrap == "model":
        obj = {"model": {f"backbone.{k}": v for k, v in state.items()}}
    elif wrap == "state_dict_module":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        obj = state
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    assert set(load_checkpoint(path)) >= set(state)
    spec = get_backbone_spec("test_vit")
    backbone = build_backbone(spec, resolve_weights(spec, path), image_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(backbone.module(x), model.eval()(x))  # [CLS] after the final norm


def test_vit_checkpoint_at_another_resolution_is_resampled(tmp_path):
    _, state = _vit_state(image_size=64)
    path = tmp_path / "vit64.pth"
    torch.save(state, path)
    spec = get_backbone_spec("test_vit")
    backbone = build_backbone(spec, resolve_weights(spec, path), image_size=32)
    with torch.inference_mode():
        assert backbone.module(torch.zeros(1, 3, 32, 32)).shape == (1, 64)
    assert "blocks.0" in available_layers(backbone.module.model)


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    _, state = _vit_state()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.1.")}, path)
    spec = get_backbone_spec("test_vit")
    with pytest.raises(BilafError, match="missing"):
        build_backbone(spec, resolve_weights(spec, path), image_size=32)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BilafError, match="not a state dict"):
        build_backbone(spec, resolve_weights(spec, tmp_path / "list.pth"), image_size=32)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BilafError, match="cannot read weights"):
        build_backbone(spec, resolve_weights(spec, tmp_path / "junk.pth"), image_size=32)
    with pytest.raises(BilafError, match="does not exist"):
        resolve_weights(spec, tmp_path / "absent.pth")


def test_dino_needs_weights_or_explicit_network():
    spec = get_backbone_spec("dino-vits16")
    with pytest.raises(BilafError, match="--weights PATH.*--download"):
        resolve_weights(spec)
    assert resolve_weights(spec, allow_network=True).kind == "timm-pretrained"


def test_download_attempt_fails_cleanly_without_network(monkeypatch):
    # Hub offline mode: the same failure as a blocked connection, minus huggingface_hub's ~45 s
    # of retries with back-off.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = get_backbone_spec("test_vit")
    with pytest.raises(BilafError, match="could not download"):
        build_backbone(spec, resolve_weights(spec, allow_network=True), image_size=32)


def test_random_weights_are_deterministic():
    spec = get_backbone_spec("test_efficientnet")
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for _ in range(2):
        backbone = build_backbone(spec, resolve_weights(spec, "random"), image_size=32)
        with torch.inference_mode():
            outs.append(backbone.module(x))
    assert torch.equal(outs[0], outs[1])
