"""Annotated images: detection boxes with "name score" labels, a stable colour per class name."""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Mapping

import cv2
import numpy as np

from ssd_ros.vision.detections import Detections
from ssd_ros.vision.image_codec import validate_image

__all__ = ["class_color", "draw_detections"]


def class_color(name: str) -> tuple[int, int, int]:
    """A bright RGB colour derived from the class name only (same name, same colour, every run)."""
    digest = zlib.crc32(name.encode("utf-8"))
    hue = (digest & 0xFFFF) / 0x10000
    saturation = 0.65 + 0.35 * ((digest >> 16) & 0xFF) / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    rgb: np.ndarray,
    detections: Detections,
    *,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Return a copy of the RGB uint8 image with each detection's box and "name score" label drawn.

    A tracked detection's label starts with its track id (``#7 person 0.91``), so RViz shows which box
    keeps which identity.

    Args:
        rgb: HxWx3 uint8 RGB image (not modified).
        detections: detections in that image's pixels.
        colors: optional RGB colour per class name; others get :func:`class_color`.
    """
    out = np.ascontiguousarray(validate_image(rgb)).copy()
    height, width = out.shape[:2]
    scale = max(0.4, min(height, width) / 600.0)  # text and lines grow with the image
    thickness = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    # Lowest scores first, so the most confident boxes and labels end up on top.
    for i in np.argsort(detections.scores, kind="stable"):
        name = detections.class_names[int(detections.labels[i])]
        color = tuple(int(c) for c in (colors or {}).get(name, class_color(name)))
        x1, y1, x2, y2 = (round(float(v)) for v in detections.boxes[i])
        x1, x2 = min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)
        y1, y2 = min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        track = detections.ids[i]
        label = f"{'#' + track + ' ' if track else ''}{name} {float(detections.scores[i]):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, font, 0.5 * scale, max(1, thickness - 1))
        # Label above the box if there is room, else inside its top edge.
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        top = min(top, max(0, height - text_h - baseline - 2))
        right = min(x1 + text_w + 4, width - 1)
        cv2.rectangle(out, (x1, top), (right, top + text_h + baseline + 2), color, cv2.FILLED)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(
            out, label, (x1 + 2, top + text_h + 1), font, 0.5 * scale, text_color, max(1, thickness - 1), cv2.LINE_AA
        )
    return out
