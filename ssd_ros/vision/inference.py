"""The SSD frame path around the network, shared by every inference backend.

A backend (torch, ONNX Runtime, OpenVINO; see :mod:`ssd_ros.vision.backends`) only runs the network: a batch of
normalised ``(N, 3, H, W)`` float32 images in; out, for the ``A`` default boxes, the boxes the network's
regressions give them (:func:`decode_boxes`, in network-input pixels) ``(N, A, 4)`` and the class scores (softmax
of the logits) ``(N, A, C)``. The runtimes compute both inside their own graph. Everything else is here, once, so
backends differ only in the network's arithmetic:

* :func:`preprocess`: uint8 RGB images of any size -> the network input, equal to torchvision's
  ``GeneralizedRCNNTransform`` for SSD (scale to [0, 1], normalise, bilinear resize without antialias,
  half-pixel centres) to float rounding, but with OpenCV and NumPy: ~0.9 ms for a 640x480 frame where the
  torch path takes ~1.7 ms (one core; ``benchmarks/bench_inference.py``). The normalisation runs on the
  planar (CHW) copy: on interleaved pixels NumPy's inner loop is the 3 channels, and the same arithmetic
  took 1.7 ms instead of 0.2. The resize runs on float32 after the
  conversion: resizing the uint8 image first is no faster at VGA (0.17 vs 0.19 ms) and its fixed-point
  rounding moves boxes by up to 0.5 px and reorders near-tied scores, which breaks exact parity with
  torchvision. Normalisation is per-channel affine and bilinear weights sum to one, so it is applied
  after the resize, on 300x300 pixels instead of the whole frame.
* :func:`postprocess`: torchvision's ``SSD.postprocess_detections`` (after the backend's softmax and box
  decoding: per-class score threshold and top-k candidates, per-class NMS, top-N) followed by
  ``GeneralizedRCNNTransform.postprocess`` (scaling to the original image), written vectorised over classes
  (torchvision loops over them in Python) and with a mask of the model outputs to keep, so class filters and
  dropped labels act before NMS and the top-N.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from ssd_ros.vision import model as model_lib

__all__ = ["BOX_CODER", "NetworkSpec", "anchors", "candidates", "decode_boxes", "postprocess", "preprocess"]

# SSD's box coder (torchvision.models.detection.ssd.SSD uses the same weights).
BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


@dataclass(frozen=True)
class NetworkSpec:
    """What the frame path needs to know about a network besides its weights.

    Attributes:
        input_size: network input ``(height, width)``.
        image_mean, image_std: normalisation of [0, 1] RGB input, ``(x - mean) / std``.
        anchors: ``(A, 4)`` default boxes ``x1, y1, x2, y2`` in network-input pixels, in the order of the
            network's outputs.
        num_outputs: classification outputs per default box, background (label 0) included.
        topk_candidates: candidates per class kept before NMS.
    """

    input_size: tuple[int, int]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    anchors: torch.Tensor
    num_outputs: int
    topk_candidates: int

    @functools.cached_property
    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, offset)`` per channel: ``(x / 255 - mean) / std`` as one multiply-add per uint8 pixel."""
        mean = np.asarray(self.image_mean, np.float32)
        std = np.asarray(self.image_std, np.float32)
        return 1.0 / (255.0 * std), -mean / std

    def anchors_on(self, device: torch.device) -> torch.Tensor:
        """:attr:`anchors` on ``device``, copied there once (the torch backend decodes a CUDA network's boxes there)."""
        copies = self._anchor_copies
        if device not in copies:  # a race only copies twice
            copies[device] = self.anchors.to(device)
        return copies[device]

    @functools.cached_property
    def _anchor_copies(self) -> dict[torch.device, torch.Tensor]:
        return {self.anchors.device: self.anchors}

    @classmethod
    def from_card(cls, card: Any, feature_map_sizes: Sequence[Sequence[int]]) -> NetworkSpec:
        """The spec of the network a :class:`~ssd_ros.vision.model_card.ModelCard` describes, given its feature maps."""
        return cls(
            input_size=tuple(card.input_size),
            image_mean=tuple(card.image_mean),
            image_std=tuple(card.image_std),
            anchors=anchors(model_lib.box_generator(card.default_boxes), card.input_size, feature_map_sizes),
            num_outputs=card.num_classes,
            topk_candidates=model_lib.topk_candidates(card.architecture),
        )


def anchors(
    generator: DefaultBoxGenerator, input_size: Sequence[int], feature_map_sizes: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The ``(A, 4)`` xyxy default boxes ``generator`` makes for feature maps of these sizes.

    Only the feature maps' sizes matter to the generator, so an exported network needs no forward pass.
    """
    height, width = (int(v) for v in input_size)
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    features = [torch.zeros(1, 1, int(h), int(w)) for h, w in feature_map_sizes]
    return generator.cpu()(images, features)[0]


def preprocess(images: Sequence[np.ndarray], spec: NetworkSpec) -> np.ndarray:
    """RGB uint8 HxWx3 images -> the ``(N, 3, H, W)`` float32 network input (see the module docstring)."""
    height, width = spec.input_size
    scale, offset = spec.normalisation
    batch = np.empty((len(images), 3, height, width), np.float32)
    for i, image in enumerate(images):
        small = cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        batch[i] = small.transpose(2, 0, 1)
        batch[i] *= scale[:, None, None]
        batch[i] += offset[:, None, None]
    return batch


def postprocess(
    boxes: torch.Tensor,
    class_scores: torch.Tensor,
    spec: NetworkSpec,
    image_shapes: Sequence[Sequence[int]],
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
    keep_outputs: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The network's outputs -> per image ``(boxes, scores, labels)`` in that image's pixels.

    Args:
        boxes: the ``(N, A, 4)`` boxes the network's regressions give the default boxes (:func:`decode_boxes`).
        class_scores: the network's ``(N, A, C)`` class scores (softmax over the ``C`` outputs).
        spec: the network's :class:`NetworkSpec`.
        image_shapes: ``(height, width, ...)`` of each original image.
        score_threshold: candidates need a softmax score strictly above this.
        nms_iou: per-class NMS IoU threshold.
        max_detections: at most this many detections per image, highest scores first.
        keep_outputs: ``(C,)`` bool, the model outputs that may become detections (background never).

    Labels are model output indices (1..C-1); scores are sorted descending.
    """
    keep_outputs = keep_outputs.to(class_scores.device)
    results = []
    for image_boxes, all_scores, shape in zip(boxes, class_scores, image_shapes):
        anchor_idx, labels, candidate_scores = candidates(
            all_scores.float() * keep_outputs, score_threshold, spec.topk_candidates
        )
        picked = image_boxes[anchor_idx]
        keep = box_ops.batched_nms(picked, candidate_scores, labels, nms_iou)[:max_detections]
        height, width = shape[:2]
        scale = torch.tensor(
            [width / spec.input_size[1], height / spec.input_size[0]] * 2, dtype=picked.dtype, device=picked.device
        )
        results.append((picked[keep] * scale, candidate_scores[keep], labels[keep]))
    return results


def candidates(
    scores: torch.Tensor, score_threshold: float, topk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(anchor index, label, score)`` of the ``(A, C)`` scores above the threshold, the best ``topk`` per class.

    Sorted by class, then by score descending (the first step of :func:`postprocess`).
    """
    anchor_idx, labels = torch.nonzero(scores > score_threshold, as_tuple=True)
    candidate_scores = scores[anchor_idx, labels]
    # Per-class top-k without a Python loop over classes: sort by score, then (stably) by class, and
    # keep each candidate whose rank inside its class is below topk.
    order = torch.argsort(candidate_scores, descending=True, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    anchor_idx, labels, candidate_scores = anchor_idx[order], labels[order], candidate_scores[order]
    counts = torch.bincount(labels, minlength=scores.shape[1])
    first_of_class = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels), device=labels.device) - first_of_class[labels]
    top = rank < topk
    return anchor_idx[top], labels[top], candidate_scores[top]


def decode_boxes(regression: torch.Tensor, anchors: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """The ``(N, A, 4)`` xyxy boxes that an ``(N, A, 4)`` ``regression`` gives the ``(A, 4)`` default boxes.

    In network-input pixels and clipped to it: :data:`BOX_CODER` (torchvision's), one image at a time as SSD does.
    """
    boxes = torch.stack([BOX_CODER.decode_single(codes, anchors) for codes in regression.float()])
    return box_ops.clip_boxes_to_image(boxes, input_size)
