"""docs/images/followed_target.png: what the follower follows, on a real rover camera frame with two people.

The frame's labelled objects (no trained model ships with the repository) go through the real pieces: the
core Tracker gives them ids, the follower's FollowLoop chooses and keeps its target, draw_detections draws.
Three panels: the detector's picture alone (both people one colour), with the follower's mark (following),
and after the followed person was not detected for 1.2 s (re-acquiring: the other person is not taken).

    scripts/run.sh python scripts/followed_target_picture.py [--out docs/images/followed_target.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ssd_ros.control.follow import FollowLoop, FollowParams
from ssd_ros.control.tracking import Tracker
from ssd_ros.evaluation.voc import parse_annotation
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.drawing import FollowMark, draw_detections

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAME = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "detection" / "test" / "2019-04-16-100738"
PERIOD_S = 0.05  # the follower's 20 Hz, one camera frame per tick
CROP = (slice(0, 360), slice(0, 560))  # every labelled object and the banner, at the frame's own scale


def caption(panel: np.ndarray, text: str) -> np.ndarray:
    """The cropped panel with a dark strip below it saying what it shows."""
    panel = panel[CROP]
    strip = np.full((34, panel.shape[1], 3), 30, np.uint8)
    cv2.putText(strip, text, (8, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([panel, strip])


def main() -> None:
    """Run the frames through tracker and follower, draw the three panels side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images" / "followed_target.png")
    args = parser.parse_args()
    rgb = cv2.cvtColor(cv2.imread(str(FRAME.with_suffix(".jpg"))), cv2.COLOR_BGR2RGB)
    labels = parse_annotation(FRAME.with_suffix(".xml"))
    scene = Detections.from_named(labels.boxes, np.ones(len(labels)), labels.names)
    tracker, loop = Tracker(), FollowLoop(FollowParams(target_classes=("Person",)))

    def step(k: int, detections: Detections) -> tuple[Detections, FollowMark]:
        tracked = tracker.update(detections, k * PERIOD_S)
        loop.offer(tracked, k * PERIOD_S)
        loop.tick(k * PERIOD_S)
        controller = loop.controller
        return tracked, FollowMark(controller.status, controller.target.track_id if controller.target else "")

    for k in range(5):  # the tracker confirms the tracks, the follower takes the larger person
        tracked, mark = step(k, scene)
    assert mark.state == "following", mark
    panels = [
        caption(draw_detections(rgb, tracked), "detector alone: two people, one colour"),
        caption(draw_detections(rgb, tracked, follow=mark), f"with the follower: {mark.text}"),
    ]
    followed = mark.track_id
    keep = np.array([i != followed for i in tracked.ids])  # the followed person is no longer detected
    gone = Detections(scene.boxes[keep], scene.scores[keep], scene.labels[keep], scene.class_names)
    for k in range(5, 5 + round(1.2 / PERIOD_S)):  # past lost_timeout_s: stopped, waiting for its id only
        tracked, mark = step(k, gone)
    assert mark.state == "re-acquiring", mark
    panels.append(caption(draw_detections(rgb, tracked, follow=mark), f"#{followed} undetected 1.2 s: {mark.text}"))
    picture = Image.fromarray(np.hstack(panels))
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
