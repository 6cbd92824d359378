"""Make a camera rosbag2 (MCAP or sqlite3) from a video file or a folder of images.

For users whose recordings come from other tools, and for tests: every frame becomes a
``sensor_msgs/Image`` on ``--topic`` (or a JPEG ``sensor_msgs/CompressedImage`` on ``<topic>/compressed``
with ``--compressed``), stamped ``start + index / rate``; the bag's receive time equals the header stamp.
Ctrl-C closes the bag with the frames written so far (and their labels) and exits with status 130.

Ground truth: with ``--labels-out DIR`` each image of an ``--images`` folder that has a VOC XML beside
it (same stem) has that XML copied to ``DIR/<stamp_ns>.xml``, the naming ``bag_eval --gt-match stamp``
reads back.

Example::

    make_bag --video lane_drive.avi --out lane_bag --storage mcap --compressed
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from std_msgs.msg import Header
from tqdm import tqdm

from ssd_ros.cli import positive_int, positive_rate
from ssd_ros.ros.images import rgb_to_compressed_msg, rgb_to_image_msg
from ssd_ros.tools.bagio import (
    COMPRESSED_IMAGE_TYPE,
    IMAGE_TYPE,
    STORAGE_PLUGINS,
    BagToolError,
    add_topic,
    deferred_interrupt,
    open_writer,
    serialize,
)
from ssd_ros.vision.image_codec import ImageDecodeError, ImageFolderError, image_files, read_image_file

DEFAULT_IMAGE_RATE_HZ = 10.0
# A header stamp's seconds are an int32: frames past 2038-01-19 would wrap to negative stamps.
MAX_STAMP_NS = 2**31 * 1_000_000_000


class Interrupted(Exception):
    """Ctrl-C while writing: the bag was closed, readable, with the frames stamped ``stamps`` (not the whole source)."""

    def __init__(self, stamps: list[int]):
        super().__init__(f"interrupted after {len(stamps)} frames")
        self.stamps = stamps


def video_frames(path: Path) -> tuple[Iterator[np.ndarray], float, int]:
    """``(RGB frames, frames per second (0 if unknown), frame count (0 if unknown))`` of a video file."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BagToolError(f"cannot open video {path} (missing, or a codec OpenCV lacks)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    return frames(), fps, count


def make_bag(
    frames: Iterator[np.ndarray],
    out: Path,
    *,
    storage: str = "mcap",
    topic: str = "/camera/image_raw",
    compressed: bool = False,
    encoding: str = "rgb8",
    rate_hz: float = DEFAULT_IMAGE_RATE_HZ,
    start_ns: int = 0,
    frame_id: str = "camera_link",
    total: int | None = None,
) -> list[int]:
    """Write ``frames`` as a camera bag at ``out``; returns each written frame's stamp in nanoseconds.

    ``BagToolError`` for a frame that cannot be read or stamped, :class:`Interrupted` on Ctrl-C; either way the
    frames before it stay in ``out`` as a readable bag.
    """
    if rate_hz <= 0:
        raise BagToolError(f"rate must be > 0 Hz, got {rate_hz}")
    stamps = []
    with open_writer(out, storage) as writer, deferred_interrupt() as interrupt:
        if compressed:
            connection = add_topic(writer, topic.rstrip("/") + "/compressed", COMPRESSED_IMAGE_TYPE)
        else:
            connection = add_topic(writer, topic, IMAGE_TYPE)
        try:
            for index, rgb in enumerate(tqdm(frames, total=total, unit="frame", desc=f"writing {out.name}")):
                if interrupt.is_set():
                    raise Interrupted(stamps)
                # Integer nanoseconds from the index (not accumulated floats): stamps never drift.
                stamp = start_ns + round(index * 1e9 / rate_hz)
                if not 0 <= stamp < MAX_STAMP_NS:
                    raise BagToolError(f"frame {index} would be stamped {stamp} ns, outside a ROS stamp's [0, 2**31) s")
                header = Header(frame_id=frame_id)
                header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                msg = rgb_to_compressed_msg(rgb, header) if compressed else rgb_to_image_msg(rgb, header, encoding)
                writer.write(connection, stamp, serialize(msg))
                stamps.append(stamp)
        except (BagToolError, ImageDecodeError) as error:  # a frame that cannot be read or written
            raise BagToolError(f"{error} (the {len(stamps)} frames before it are in {out}, a readable bag)") from error
    return stamps


def copy_labels(images: list[Path], stamps: list[int], labels_out: Path) -> int:
    """Copy the VOC XML beside each written image to ``labels_out/<stamp_ns>.xml``; returns how many were copied."""
    labels_out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path, stamp in zip(images, stamps):
        xml = path.with_suffix(".xml")
        if xml.exists():
            shutil.copyfile(xml, labels_out / f"{stamp}.xml")
            copied += 1
    return copied


def check_labels_out(labels_out: Path) -> None:
    """Refuse a ``--labels-out`` that is a file or already holds VOC XML files, before the bag is written.

    Labels of an earlier run (stamped from its own start time) mixed into this run's would be scored as this
    bag's ground truth.
    """
    if labels_out.exists() and not labels_out.is_dir():
        raise BagToolError(f"--labels-out {labels_out} is a file, not a folder")
    if labels_out.is_dir() and any(labels_out.glob("*.xml")):
        raise BagToolError(f"--labels-out {labels_out} holds XML files already (another run's labels?)")


def start_time(text: str) -> float:
    """Argparse type of ``--start-time-s``: seconds since the epoch that a ROS header stamp can hold."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds since the epoch, got {text!r}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31) s, the range of a ROS header stamp, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of ``make_bag``."""
    parser = argparse.ArgumentParser(prog="make_bag", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="video file (any format OpenCV reads)")
    source.add_argument("--images", type=Path, help="folder of images, taken in sorted file-name order")
    parser.add_argument("--out", type=Path, required=True, help="output bag folder (must not exist)")
    parser.add_argument("--storage", choices=sorted(STORAGE_PLUGINS), default="mcap", help="rosbag2 storage format")
    parser.add_argument("--topic", default="/camera/image_raw", help="image topic (default: %(default)s)")
    parser.add_argument(
        "--compressed", action="store_true", help="write JPEG sensor_msgs/CompressedImage on <topic>/compressed"
    )
    parser.add_argument("--encoding", choices=["rgb8", "bgr8"], default="rgb8", help="raw Image encoding")
    parser.add_argument(
        "--rate-hz",
        type=positive_rate,
        help=f"frame rate for the stamps (default: the video's fps, {DEFAULT_IMAGE_RATE_HZ:g} for images)",
    )
    parser.add_argument(
        "--start-time-s", type=start_time, help="stamp of the first frame, seconds since the epoch (default: now)"
    )
    parser.add_argument("--frame-id", default="camera_link", help="header frame_id (default: %(default)s)")
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    parser.add_argument(
        "--labels-out", type=Path, help="with --images: copy each image's VOC XML to DIR/<stamp_ns>.xml"
    )
    args = parser.parse_args(argv)
    if args.labels_out and not args.images:
        parser.error("--labels-out needs --images (videos carry no labels)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``make_bag`` executable; returns the exit status."""
    args = parse_args(argv)
    start_ns = round((time.time() if args.start_time_s is None else args.start_time_s) * 1e9)
    try:
        if args.labels_out:
            check_labels_out(args.labels_out)
        if args.video:
            frames, fps, count = video_frames(args.video)
            rate_hz = fps if args.rate_hz is None else args.rate_hz
            if not (math.isfinite(rate_hz) and rate_hz > 0):
                raise BagToolError(f"{args.video} does not state a usable frame rate ({rate_hz}): pass --rate-hz")
            files = []
        else:
            try:
                files = image_files(args.images)
            except ImageFolderError as error:
                raise BagToolError(str(error)) from error
            frames, count = (read_image_file(p) for p in files), len(files)
            rate_hz = DEFAULT_IMAGE_RATE_HZ if args.rate_hz is None else args.rate_hz
        if args.max_frames is not None:
            frames = (frame for _, frame in zip(range(args.max_frames), frames))
            count = min(count, args.max_frames) if count else args.max_frames
        try:
            stamps = make_bag(
                frames,
                args.out,
                storage=args.storage,
                topic=args.topic,
                compressed=args.compressed,
                encoding=args.encoding,
                rate_hz=rate_hz,
                start_ns=start_ns,
                frame_id=args.frame_id,
                total=count or None,
            )
        except Interrupted as stop:
            if args.labels_out:  # the written frames keep their labels: bag and labels still belong together
                copy_labels(files, stop.stamps, args.labels_out)
            print(
                f"make_bag: interrupted: {args.out} holds only the first {len(stop.stamps)} frames (a readable bag)",
                file=sys.stderr,
            )
            return 130
        labels = copy_labels(files, stamps, args.labels_out) if args.labels_out else 0
    except BagToolError as exc:  # make_bag turns an unreadable image into one, naming the file
        print(f"make_bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"make_bag: wrote {len(stamps)} frames at {rate_hz:g} Hz to {args.out} ({args.storage})")
    if args.video and count and len(stamps) < count:
        print(
            f"make_bag: warning: {args.video} states {count} frames but only {len(stamps)} could be read "
            "(truncated or damaged?)",
            file=sys.stderr,
        )
    if args.labels_out:
        print(f"make_bag: copied {labels} VOC annotations to {args.labels_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
