"""SSD data augmentation with torchvision transforms v2 (the SSD paper's recipe, sec. 2.2 / 3.6).

Both presets take and return ``(image, target)`` where ``image`` is a :class:`tv_tensors.Image` (uint8, CHW)
and ``target`` a dict with ``boxes`` (:class:`tv_tensors.BoundingBoxes`, XYXY pixels), ``labels`` (int64) and
``difficult`` (bool). The output image is float32 in [0, 1] at the network input size: the model's own
transform then normalises it (and its resize is a no-op at that size).

Where torchvision's transforms differ from the released Caffe SSD (``examples/ssd/ssd_pascal.py``, the
code behind the paper's 77.2 mAP) and ssd.pytorch (77.4), the choice made here is stated next to the op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

__all__ = ["SSDEvalPreset", "SSDTrainPreset"]


def _labels_and_difficult(inputs):
    """Per-box tensors that must be dropped together with their boxes by SanitizeBoundingBoxes."""
    target = inputs[1]
    return target["labels"], target["difficult"]


def _resize_and_sanitise(size: Sequence[int]) -> list:
    """The common tail of both presets: warp to the input size, drop degenerate boxes, scale to [0, 1]."""
    return [
        # Caffe picks one of five interpolations at random. Here: the filter the model itself resizes with at
        # inference (GeneralizedRCNNTransform: bilinear, no antialiasing), so training and test images share
        # their sharpness; antialiased training images carried ~0.7x the high-frequency energy of test ones.
        T.Resize(tuple(size), antialias=False),
        # Drops boxes cropped away or squeezed under 1 px by the warp (with their labels and difficult
        # flags), so every target the loss sees has positive width and height.
        T.ClampBoundingBoxes(),
        T.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_difficult),
        T.ToDtype(torch.float32, scale=True),
    ]


class SSDTrainPreset:
    """The SSD training augmentation: photometric distortion, zoom out, IoU crop, flip, sanitise, resize.

    Args:
        size: network input ``(height, width)``; boxes are warped with the image (no aspect preservation,
            as in the paper).
        fill: zoom-out canvas colour, RGB 0-255 (the model's mean colour, so the canvas is zero after
            normalisation, as in Caffe's ``expand_param``).
        hflip_prob: probability of a horizontal flip.
        zoom_out_prob: probability of zooming out.
        zoom_out_max: largest zoom-out factor (canvas side / image side).
    """

    def __init__(
        self,
        size: Sequence[int] = (300, 300),
        *,
        fill: Sequence[float] = (123.0, 117.0, 104.0),
        hflip_prob: float = 0.5,
        zoom_out_prob: float = 0.5,
        zoom_out_max: float = 4.0,
    ) -> None:
        self.transforms = T.Compose(
            [
                # Caffe: brightness +-32 (additive), contrast/saturation 0.5-1.5, hue +-18 deg, each p=0.5, and
                # no channel shuffle (random_order_prob 0). torchvision: multiplicative brightness 0.875-1.125
                # and a channel permutation with p=0.5, as ssd.pytorch's RandomLightingNoise does. Kept as
                # torchvision has it: the re-implementations that match or beat the paper use it too.
                T.RandomPhotometricDistort(p=0.5),
                # Same as Caffe's expand_param (prob 0.5, ratio up to 4, placed uniformly on the canvas).
                T.RandomZoomOut(fill=list(fill), side_range=(1.0, zoom_out_max), p=zoom_out_prob),
                # torchvision follows Caffe's batch_sampler (scale 0.3-1 rather than the paper text's 0.1-1,
                # aspect 0.5-2, min IoU from {0.1, 0.3, 0.5, 0.7, 0.9} satisfied by *any* box, keep boxes whose
                # centre is inside). Differences, accepted: torchvision draws one option uniformly (incl.
                # "whole image" and "any patch") and retries it, where Caffe collects one sample per option and
                # picks among the successful ones; width and height scales are drawn independently rather
                # than area + aspect. ssd.pytorch's min/max IoU check is buggy (almost never rejects); this is
                # the faithful one. An image without boxes always ends up uncropped.
                T.RandomIoUCrop(),
                T.RandomHorizontalFlip(p=hflip_prob),
                *_resize_and_sanitise(size),
            ]
        )

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[torch.Tensor, dict]:
        """Augment one sample (uses torch's global RNG, like every torchvision transform)."""
        return self.transforms(image, target)


class SSDEvalPreset:
    """Deterministic resize to the input size and conversion to float (training with ``--no-augment``)."""

    def __init__(self, size: Sequence[int] = (300, 300)) -> None:
        self.transforms = T.Compose(_resize_and_sanitise(size))

    def __call__(self, image: tv_tensors.Image, target: dict) -> tuple[torch.Tensor, dict]:
        """Resize one sample."""
        return self.transforms(image, target)
