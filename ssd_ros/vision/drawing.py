"""Annotated images: detection boxes with "name score" labels, a stable colour per class name.

With a :class:`FollowMark` (what a follower follows and in which state) the followed box is drawn thick in its
state's colour with a "following #7" label, every other box thin and grey, and a banner names the state, so
two people of one class no longer look alike.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ssd_ros.vision.detections import Detections
from ssd_ros.vision.image_codec import validate_image

__all__ = ["FOLLOW_COLORS", "OTHER_COLOR", "TARGET_STATES", "FollowMark", "class_color", "draw_detections"]

# What a follower can be doing (FollowController.status, or "inactive" for a node that is not active), and
# its colour (RGB): green while it follows, amber while the target is missing, grey when it follows nobody.
FOLLOW_COLORS: dict[str, tuple[int, int, int]] = {
    "following": (0, 255, 0),
    "lost": (255, 170, 0),
    "re-acquiring": (255, 120, 0),
    "searching": (200, 200, 200),
    "disabled": (200, 200, 200),
    "inactive": (200, 200, 200),
}
# The states in which the follower holds a target (its track id is marked); in the others it follows nobody.
TARGET_STATES = ("following", "lost", "re-acquiring")
# The boxes a follower does not follow: grey, so that no class colour can be taken for the target's.
OTHER_COLOR = (150, 150, 150)


@dataclass(frozen=True)
class FollowMark:
    """What a follower follows: its state (a key of :data:`FOLLOW_COLORS`) and the target's track id.

    The id counts only in :data:`TARGET_STATES` ("" while the target's id is not known).
    """

    state: str
    track_id: str = ""

    def __post_init__(self) -> None:
        if self.state not in FOLLOW_COLORS:
            raise ValueError(f"unknown follower state {self.state!r}; one of {', '.join(FOLLOW_COLORS)}")

    @property
    def text(self) -> str:
        """The banner: ``following #7``, ``re-acquiring #7``, ``searching``, ..."""
        return f"{self.state} #{self.target_id}" if self.target_id else self.state

    @property
    def target_id(self) -> str:
        """The followed track id, "" when the follower follows nobody."""
        return self.track_id if self.state in TARGET_STATES else ""


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
    follow: FollowMark | None = None,
) -> np.ndarray:
    """Return a copy of the RGB uint8 image with each detection's box and "name score" label drawn.

    A tracked detection's label starts with its track id (``#7 person 0.91``), so RViz shows which box
    keeps which identity.

    Args:
        rgb: HxWx3 uint8 RGB image (not modified).
        detections: detections in that image's pixels.
        colors: optional RGB colour per class name; others get :func:`class_color`.
        follow: what a follower follows: the detection carrying ``follow.track_id`` is drawn three times as
            thick in its state's colour (:data:`FOLLOW_COLORS`) and labelled ``following #7 person 0.91``,
            the others as usual but in :data:`OTHER_COLOR`, and a banner in the top-left corner names the state.
    """
    out = np.ascontiguousarray(validate_image(rgb)).copy()
    height, width = out.shape[:2]
    scale = max(0.4, min(height, width) / 600.0)  # text and lines grow with the image
    thickness = max(1, round(2 * scale))
    target = follow.target_id if follow is not None else ""
    ids = detections.ids
    # Lowest scores first, so the most confident boxes and labels end up on top; the target last of all.
    order = sorted(np.argsort(detections.scores, kind="stable"), key=lambda i: bool(target) and ids[i] == target)
    for i in order:
        name = detections.class_names[int(detections.labels[i])]
        track = ids[i]
        label = f"{'#' + track + ' ' if track else ''}{name} {float(detections.scores[i]):.2f}"
        if follow is None:
            color, width_px = tuple(int(c) for c in (colors or {}).get(name, class_color(name))), thickness
        elif target and track == target:
            color, width_px = FOLLOW_COLORS[follow.state], 3 * thickness
            label = f"{follow.state} {label}"
        else:
            color, width_px = OTHER_COLOR, thickness
        x1, y1, x2, y2 = (round(float(v)) for v in detections.boxes[i])
        x1, x2 = min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)
        y1, y2 = min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, width_px, cv2.LINE_AA)
        _label(out, label, x1, y1, color, scale, thickness)
    if follow is not None:
        _label(out, f"follower: {follow.text}", 0, 0, FOLLOW_COLORS[follow.state], scale, thickness)
    return out


def _label(out: np.ndarray, text: str, x: int, y: int, color, scale: float, thickness: int) -> None:
    """``text`` on a filled ``color`` box whose bottom-left is ``(x, y)`` if there is room above, else inside."""
    height, width = out.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), baseline = cv2.getTextSize(text, font, 0.5 * scale, max(1, thickness - 1))
    top = y - text_h - baseline - 2 if y - text_h - baseline - 2 >= 0 else y
    top = min(top, max(0, height - text_h - baseline - 2))
    right = min(x + text_w + 4, width - 1)
    cv2.rectangle(out, (x, top), (right, top + text_h + baseline + 2), color, cv2.FILLED)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(out, text, (x + 2, top + text_h + 1), font, 0.5 * scale, text_color, max(1, thickness - 1), cv2.LINE_AA)
