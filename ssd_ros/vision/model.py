"""The one model builder shared by the node, training, evaluation and export.

Two architectures, both torchvision :class:`~torchvision.models.detection.SSD` modules with the same
interface (a list of float CHW images in [0, 1] in, a list of ``boxes``/``scores``/``labels`` dicts out):

``ssd300_vgg16``
    The SSD paper's SSD300 configured for PASCAL VOC: VGG16 with the SSD modifications (ceil-mode pool3,
    pool5 3x3/1, atrous fc6, fc7, extra layers conv8_2..conv11_2), conv4_3 L2 norm with a learned scale,
    and the paper's VOC default boxes (scales 0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05; steps 8, 16, 32, 64,
    100, 300; aspect ratios [2], [2,3], [2,3], [2,3], [2], [2]) -> 8732 boxes on 38/19/10/5/3/1 maps.
    torchvision's own ``ssd300_vgg16`` uses COCO scales (0.07, 0.15, ...); only the anchors differ.
``ssdlite320_mobilenet_v3``
    torchvision's SSDlite320 with a MobileNetV3-Large backbone (a Raspberry-Pi-sized option).

``num_classes`` always counts the background class (index 0): VOC is 20 classes + background = 21.

Also the ready COCO models: torchvision's COCO-trained ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large``
weights loaded (hash-checked, ``weights_only``) into the same builder, configured as torchvision configures them,
with their 91-entry category list mapped to the 80 real class names.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from functools import partial
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSD300_VGG16_Weights, _vgg_extractor
from torchvision.models.detection.ssdlite import (
    SSDLite320_MobileNet_V3_Large_Weights,
    SSDLiteHead,
    _mobilenet_extractor,
    _normal_init,
)
from torchvision.models.mobilenetv3 import MobileNet_V3_Large_Weights, mobilenet_v3_large
from torchvision.models.vgg import VGG16_Weights, make_layers
from torchvision.models.vgg import cfgs as vgg_cfgs

__all__ = [
    "ARCHITECTURES",
    "VOC_CLASSES",
    "WeightsUnavailableError",
    "box_generator",
    "build_coco_model",
    "cached_weights_path",
    "build_model",
    "coco_build_options",
    "coco_class_names",
    "coco_label_map",
    "coco_weights",
    "default_box_config",
    "input_size",
    "load_pretrained_state_dict",
    "normalization",
    "topk_candidates",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 PASCAL VOC classes in the official (alphabetical) order; model label i+1 is VOC_CLASSES[i]."""

ARCHITECTURES: tuple[str, ...] = ("ssd300_vgg16", "ssdlite320_mobilenet_v3")

# SSD300 for VOC, as in the SSD paper (Liu et al. 2016, sec. 2.2/3 and the released Caffe prototxt).
_SSD300_VOC_BOXES: dict[str, Any] = {
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "scales": [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05],
    "steps": [8, 16, 32, 64, 100, 300],
    "clip": True,
}
# torchvision's SSDlite320 anchors (scales derived from min_ratio=0.2, max_ratio=0.95, no steps).
_SSDLITE_BOXES: dict[str, Any] = {
    "aspect_ratios": [[2, 3] for _ in range(6)],
    "scales": list(DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95).scales),
    "steps": None,
    "clip": True,
}
# torchvision's COCO ssd300_vgg16 anchors (differ from the VOC ones only in the scales).
_SSD300_COCO_BOXES: dict[str, Any] = {
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    "scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
    "steps": [8, 16, 32, 64, 100, 300],
    "clip": True,
}

# (height, width) of the network input; images of any size are resized to it by the model's transform.
_INPUT_SIZE = {"ssd300_vgg16": (300, 300), "ssdlite320_mobilenet_v3": (320, 320)}

# Normalisation applied by the model's transform to [0, 1] images: (x - mean) / std.
# SSD300-VGG16 uses the Caffe-style VGG weights: mean pixel (123, 117, 104)/255 and std 1/255 undo the
# [0, 1] scaling, exactly torchvision's ssd300_vgg16 defaults.  SSDlite maps [0, 1] to [-1, 1].
_NORMALIZATION = {
    "ssd300_vgg16": ([0.48235, 0.45882, 0.40784], [1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0]),
    "ssdlite320_mobilenet_v3": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}

# Post-processing defaults of the SSD module (the Detector overrides them per call).
_POSTPROCESS = {
    "ssd300_vgg16": {"score_thresh": 0.01, "nms_thresh": 0.45, "detections_per_img": 200, "topk_candidates": 400},
    "ssdlite320_mobilenet_v3": {
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "detections_per_img": 300,
        "topk_candidates": 300,
    },
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no internet and nothing cached)."""


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def default_box_config(architecture: str) -> dict[str, Any]:
    """The default-box (anchor) configuration of ``architecture``, as plain lists (for the model card).

    Keys: ``aspect_ratios`` (per feature map), ``scales`` (one more than feature maps: s_k and the
    extra s_{k+1} used for the sqrt(s_k s_{k+1}) box), ``steps`` (pixels per cell, or None to use the
    feature-map size), ``clip``.
    """
    _check_architecture(architecture)
    config = _SSD300_VOC_BOXES if architecture == "ssd300_vgg16" else _SSDLITE_BOXES
    return copy.deepcopy(config)


def input_size(architecture: str) -> tuple[int, int]:
    """The network input size ``(height, width)`` of ``architecture``."""
    _check_architecture(architecture)
    return _INPUT_SIZE[architecture]


def normalization(architecture: str) -> tuple[list[float], list[float]]:
    """``(image_mean, image_std)`` the model applies to [0, 1] RGB input."""
    _check_architecture(architecture)
    mean, std = _NORMALIZATION[architecture]
    return list(mean), list(std)


def topk_candidates(architecture: str) -> int:
    """Candidates per class that ``architecture``'s post-processing keeps before NMS (torchvision's value)."""
    _check_architecture(architecture)
    return _POSTPROCESS[architecture]["topk_candidates"]


def box_generator(config: Mapping[str, Any]) -> DefaultBoxGenerator:
    """Torchvision's ``DefaultBoxGenerator`` for a default-box configuration (see :func:`default_box_config`)."""
    try:
        aspect_ratios = [list(r) for r in config["aspect_ratios"]]
        scales = [float(s) for s in config["scales"]]
        steps = None if config.get("steps") is None else [int(s) for s in config["steps"]]
        clip = bool(config.get("clip", True))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"invalid default-box configuration {dict(config)!r}: {e}") from e
    if len(scales) != len(aspect_ratios) + 1:
        raise ValueError(
            f"invalid default-box configuration: {len(aspect_ratios)} feature maps need "
            f"{len(aspect_ratios) + 1} scales, got {len(scales)}"
        )
    return DefaultBoxGenerator(aspect_ratios, scales=scales, steps=steps, clip=clip)


def build_model(
    architecture: str,
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    default_boxes: Mapping[str, Any] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    reduced_tail: bool = False,
) -> SSD:
    """Build an SSD detector in eval mode.

    Args:
        architecture: one of :data:`ARCHITECTURES`.
        num_classes: number of classes **including** background (21 for VOC).
        pretrained_backbone: load ImageNet backbone weights through torchvision's weights API
            (``VGG16_Weights.IMAGENET1K_FEATURES``, the Caffe-converted VGG16 the SSD paper used, or
            ``MobileNet_V3_Large_Weights.IMAGENET1K_V1``); needs internet or torch's cache. Raises
            :class:`WeightsUnavailableError` when they cannot be obtained.
        default_boxes: a default-box configuration (see :func:`default_box_config`) to use instead of
            the architecture's; for ssdlite320 the aspect ratios must stay the same (they size the head).
        image_mean: normalisation mean override (default: :func:`normalization`).
        image_std: normalisation std override (default: :func:`normalization`).
        reduced_tail: ssdlite320 only: MobileNetV3's last stage at half width (960 -> 480 channels), the
            structure torchvision's COCO SSDlite weights were trained with (from scratch). The ImageNet
            backbone has the full tail, so this excludes ``pretrained_backbone``.

    The head is randomly initialised (torchvision's init); nothing is downloaded unless
    ``pretrained_backbone`` is true.
    """
    _check_architecture(architecture)
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be an int >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    mean, std = _NORMALIZATION[architecture]
    kwargs: dict[str, Any] = {
        "image_mean": list(mean if image_mean is None else image_mean),
        "image_std": list(std if image_std is None else image_std),
        **_POSTPROCESS[architecture],
    }
    if len(kwargs["image_mean"]) != 3 or len(kwargs["image_std"]) != 3:
        raise ValueError("image_mean and image_std need 3 values (R, G, B)")
    boxes = default_box_config(architecture) if default_boxes is None else dict(default_boxes)
    if reduced_tail and architecture != "ssdlite320_mobilenet_v3":
        raise ValueError(f"reduced_tail is a MobileNetV3 option; {architecture} has no such backbone")
    if reduced_tail and pretrained_backbone:
        raise ValueError("reduced_tail excludes pretrained_backbone (the ImageNet MobileNetV3 has the full tail)")

    if architecture == "ssd300_vgg16":
        vgg = _vgg16(pretrained_backbone)
        # trainable_layers=5: nothing frozen here; training code freezes what it wants.
        backbone = _vgg_extractor(vgg, False, 5)
        # conv4_3, fc7, conv8_2 .. conv11_2; given, so SSD need not find them with a dummy forward pass.
        backbone.out_channels = [512, 1024, 512, 256, 256, 256]
        model = SSD(backbone, box_generator(boxes), _INPUT_SIZE[architecture], num_classes, **kwargs)
    else:
        generator = box_generator(boxes)
        if generator.aspect_ratios != _SSDLITE_BOXES["aspect_ratios"]:
            raise ValueError(
                f"ssdlite320_mobilenet_v3 needs aspect ratios {_SSDLITE_BOXES['aspect_ratios']}, "
                f"got {generator.aspect_ratios}"
            )
        model = _build_ssdlite(num_classes, generator, pretrained_backbone, bool(reduced_tail), kwargs)
    return model.eval()


def _vgg16(pretrained: bool) -> nn.Module:
    """VGG16 features (all the SSD extractor uses), ImageNet-trained or with torchvision's init.

    Only ``features`` is built: the 120M-parameter classifier SSD throws away would cost ~2.5 s per build on
    a CPU (and the ImageNet file's classifier entries are not used either).
    """
    features = make_layers(vgg_cfgs["D"], batch_norm=False)
    holder = nn.Module()
    holder.features = features
    if pretrained:
        state = load_pretrained_state_dict(VGG16_Weights.IMAGENET1K_FEATURES, what="VGG16 ImageNet backbone")
        holder.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")}, strict=True)
        return holder
    # Same init as torchvision's VGG.
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return holder


def _build_ssdlite(
    num_classes: int, generator: DefaultBoxGenerator, pretrained_backbone: bool, reduced_tail: bool, kwargs
) -> SSD:
    """Build torchvision's ssdlite320_mobilenet_v3_large from its parts.

    Unlike torchvision's builder, the MobileNetV3 tail is reduced only when asked: torchvision halves the last
    stage's channels whenever no backbone weights are given, which would make a checkpoint trained from an
    ImageNet backbone impossible to rebuild without downloading. Trained models keep the full tail; only
    torchvision's COCO weights (trained from scratch) have the reduced one, and their card says so.
    """
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    mobilenet = mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail)
    if pretrained_backbone:
        weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1
        mobilenet.load_state_dict(load_pretrained_state_dict(weights, what="MobileNetV3-Large ImageNet backbone"))
    else:
        _normal_init(mobilenet)  # torchvision's init for a backbone trained from scratch
    backbone = _mobilenet_extractor(mobilenet, 6, norm_layer)
    size = _INPUT_SIZE["ssdlite320_mobilenet_v3"]
    # C4 expansion, last MobileNet stage, 4 extra blocks (torchvision finds them with a dummy forward pass).
    out_channels = [672, 480 if reduced_tail else 960, 512, 256, 256, 128]
    backbone.out_channels = out_channels
    head = SSDLiteHead(out_channels, generator.num_anchors_per_location(), num_classes, norm_layer)
    return SSD(backbone, generator, size, num_classes, head=head, **kwargs)


def cached_weights_path(weights: Any) -> Path:
    """Where torch's hub cache keeps a torchvision weights entry's file (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_pretrained_state_dict(
    weights: Any, *, what: str, progress: bool = False, alternative: str = ""
) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights entry (``weights.url``), downloaded or cached, checked, safe.

    torchvision names every file ``<name>-<sha256 prefix>.pth``. A download is verified against that prefix
    before it is moved into the cache (torch.hub's ``download_url_to_file``); a file already in the cache is
    verified the same way, so a file copied or planted there is refused, not trusted. Either way the file is
    read with ``torch.load(weights_only=True)``: tensors and plain containers only, never code (the hash
    prefix is too short to be a security boundary on its own). Raises :class:`WeightsUnavailableError` with
    what to do.
    """
    url = weights.url
    path = cached_weights_path(weights)
    match = torch.hub.HASH_REGEX.search(path.name)
    if not match or len(match.group(1)) < 8:
        raise WeightsUnavailableError(f"{url}: the file name carries no sha256 prefix to check it by")
    prefix = match.group(1)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
        except (OSError, HTTPException, ValueError, RuntimeError) as e:
            # What download_url_to_file (urllib) raises: URLError/HTTPError, socket and SSL errors (OSErrors), a
            # connection cut mid-body (http.client.IncompleteRead), a bad Content-Length (ValueError), and a
            # RuntimeError for a download whose sha256 does not match the name.
            raise WeightsUnavailableError(
                f"could not download the {what} weights from {url} ({type(e).__name__}: {e}). Check the internet "
                f"connection, or copy {path.name} into {path.parent} (honours $TORCH_HOME; its sha256 is checked "
                f"against the name){alternative}."
            ) from e
    else:
        with path.open("rb") as f:  # streamed: a backbone file is hundreds of MB, torch.load reads it next
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if not digest.startswith(prefix):
            raise WeightsUnavailableError(
                f"the cached {what} weights {path} are not the published file (sha256 {digest[: len(prefix)]}..., "
                f"expected {prefix}...): delete it, it is downloaded again from {url}"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - bad-input boundary: torch.load of a damaged or forged file
        # raises UnpicklingError (objects other than tensors), RuntimeError (bad zip), EOFError (truncated),
        # and, for corrupt pickle bytes inside a valid zip, UnicodeDecodeError, IndexError, TypeError,
        # KeyError, AssertionError, ... (seen fuzzing torch 2.14): any of them means "not a plain weight file".
        raise WeightsUnavailableError(
            f"the {what} weights {path} are not a plain weight file and were not loaded "
            f"(torch.load with weights_only=True refused it: {type(e).__name__}); delete the file"
        ) from e


# ---------------------------------------------------------------------------------------------------
# Ready models: torchvision's COCO-trained weights

# Per architecture: torchvision's weights entry, and what the builder needs to make torchvision's structure
# for it: SSD300 with the COCO anchors; SSDlite with its own anchors and the reduced MobileNetV3 tail that
# torchvision's ssdlite320_mobilenet_v3_large builds when given these weights. Normalisation and the
# post-processing defaults are the architecture's, which are torchvision's (tested against its builders).
_COCO: dict[str, tuple[Any, dict[str, Any]]] = {
    "ssd300_vgg16": (SSD300_VGG16_Weights.COCO_V1, {"default_boxes": _SSD300_COCO_BOXES, "reduced_tail": False}),
    "ssdlite320_mobilenet_v3": (
        SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
        {"default_boxes": _SSDLITE_BOXES, "reduced_tail": True},
    ),
}
_COCO_NAMES = {"ssd300_vgg16": "torchvision COCO SSD300", "ssdlite320_mobilenet_v3": "torchvision COCO SSDlite320"}


def coco_weights(architecture: str = "ssd300_vgg16") -> Any:
    """The COCO_V1 weights entry of torchvision for ``architecture`` (its ``url``, ``meta`` categories, metrics)."""
    _check_architecture(architecture)
    return _COCO[architecture][0]


def coco_build_options(architecture: str = "ssd300_vgg16") -> dict[str, Any]:
    """The :func:`build_model` keywords (``default_boxes``, ``reduced_tail``) of torchvision's COCO structure."""
    _check_architecture(architecture)
    return copy.deepcopy(_COCO[architecture][1])


def _coco_categories() -> list[str]:
    # One list for both architectures (torchvision's _COCO_CATEGORIES; tested).
    return list(SSD300_VGG16_Weights.COCO_V1.meta["categories"])


def coco_class_names() -> tuple[str, ...]:
    """The 80 COCO class names in torchvision's order, without ``__background__`` and the ``N/A`` holes."""
    return tuple(c for c in _coco_categories() if c not in ("__background__", "N/A"))


def coco_label_map() -> tuple[int, ...]:
    """For each of the COCO model's 91 output labels, the index into :func:`coco_class_names`, or -1.

    Label 0 (background) and the 10 unused ``N/A`` ids map to -1 (such detections are dropped).
    """
    names = coco_class_names()
    index = {name: i for i, name in enumerate(names)}
    return tuple(index.get(c, -1) if c not in ("__background__", "N/A") else -1 for c in _coco_categories())


def build_coco_model(architecture: str = "ssd300_vgg16", *, progress: bool = False) -> SSD:
    """The COCO-trained ``architecture`` of torchvision (91 outputs; see :func:`coco_label_map`), in eval mode.

    The same model torchvision's ``ssd300_vgg16`` / ``ssdlite320_mobilenet_v3_large`` builders make for their
    ``COCO_V1`` weights (anchors, normalisation, input size), whose own loading would unpickle the file with
    ``weights_only=False`` and trust the cache unchecked. Downloads the weights once into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``). Raises :class:`WeightsUnavailableError` saying what to do when they
    cannot be downloaded (offline robot: copy the file into the cache, or use a model file made on a
    machine with internet), or when the cached file is not the published one or does not fit.
    """
    _check_architecture(architecture)
    weights, options = _COCO[architecture]
    what = _COCO_NAMES[architecture]
    state = load_pretrained_state_dict(
        weights,
        what=what,
        progress=progress,
        alternative=(
            f", or make a model file on a machine with internet (export_model --coco {architecture} --format onnx "
            "--out coco.onnx) and use that local file instead"
        ),
    )
    with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: leave the caller's RNG alone
        model = build_model(architecture, len(weights.meta["categories"]), **copy.deepcopy(options))
    expected = model.state_dict()
    problem = _state_dict_difference(expected, state)
    if problem:
        path = cached_weights_path(weights)
        raise WeightsUnavailableError(
            f"the cached {what} weights {path} do not fit torchvision's COCO {architecture} ({problem}): it is "
            f"another model's file under this name; delete it, it is downloaded again from {weights.url}"
        )
    model.load_state_dict(state)
    return model.eval()


def _state_dict_difference(expected: Mapping[str, torch.Tensor], state: Any) -> str | None:
    """Why ``state`` is not a state dict of ``expected``'s keys and shapes, or None."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"holds a {type(state).__name__}, not a dict of tensors"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return f"{len(missing)} tensors missing, e.g. {missing[:2]}; {len(unexpected)} unknown, e.g. {unexpected[:2]}"
    differ = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if differ:
        key = differ[0]
        found, wanted = tuple(state[key].shape), tuple(expected[key].shape)
        return f"{len(differ)} tensor shapes differ, e.g. {key}: {found}, the model's is {wanted}"
    return None
