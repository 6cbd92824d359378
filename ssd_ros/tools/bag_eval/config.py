"""What one ``bag_eval`` run is (``EvalConfig``, the parsed command line, frozen) and the parts it builds.

The detector is built as the detector node builds it, the tracker from the node's ``track_*`` settings, and
the follower's settings from its parameters file and the options; every bad value is a ``BagToolError``
naming it, raised before any output is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ssd_ros.cli import inference_kwargs, read_params_files
from ssd_ros.control.follow import FollowerSettings, FollowParams, class_mismatch
from ssd_ros.control.tracking import Tracker, TrackerParams
from ssd_ros.settings import settings_from_mapping
from ssd_ros.tools.bagio import BagToolError
from ssd_ros.vision.checkpoint import CheckpointError
from ssd_ros.vision.detector import Detector


@dataclass(frozen=True)
class EvalConfig:
    """The command line of one run (``cli.parse_args`` holds each option's default and meaning)."""

    bag: Path
    checkpoint: Path
    topic: str | None
    out: Path | None
    storage: str
    report: Path | None
    score_threshold: float
    nms_iou: float
    max_detections: int
    class_filter: tuple[str, ...] | None
    device: str
    backend: str
    precision: str
    threads: int
    batch_size: int
    max_frames: int | None
    annotated: bool
    control_rate_hz: float | None
    follow_config: tuple[Path, ...]
    follow_classes: tuple[str, ...] | None
    camera_info_topic: str | None
    follow_param: tuple[str, ...]
    twist_stamped: bool
    tracking: bool
    track_param: tuple[str, ...]
    gt_tracks: Path | None
    ground_truth: Path | None
    gt_match: str
    metric: str
    iou: float
    quiet: bool

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvalConfig:
        """The config of the parsed options (lists become tuples: nothing in a run changes it)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()})

    @property
    def out_bag(self) -> Path:
        """The output bag folder: ``--out``, or ``<bag>_eval`` beside the input.

        ``bag_eval .`` writes ``../<folder name>_eval``; an input without a name to derive it from (the filesystem
        root) is a ``BagToolError``.
        """
        if self.out is not None:
            return self.out
        # "." and ".." name no folder of their own: the absolute path does.
        bag = Path(os.path.abspath(self.bag)) if self.bag.name in ("", "..") else self.bag
        if not bag.name:
            raise BagToolError(f"input bag {self.bag} has no folder name for the default output: give --out")
        return bag.with_name(bag.stem + "_eval")


@dataclass(frozen=True)
class FollowerOptions:
    """How the follower node would run: its parameters file, timer rate and command type."""

    config: dict
    rate_hz: float
    twist_stamped: bool
    frame_id: str


def load_detector(config: EvalConfig) -> Detector:
    """The detector the command line describes, built as the detector node builds it (the one place bag_eval does)."""
    try:
        detector = Detector.from_checkpoint(
            config.checkpoint,
            score_threshold=config.score_threshold,
            nms_iou=config.nms_iou,
            max_detections=config.max_detections,
            device=config.device,
            **inference_kwargs(config),
        )
    except (CheckpointError, ValueError) as exc:  # ValueError: a backend/precision/device that cannot run
        raise BagToolError(str(exc)) from exc
    try:
        detector.class_filter = config.class_filter
    except ValueError as exc:
        raise BagToolError(f"--class-filter: {exc}") from exc
    return detector


def make_tracker(config: EvalConfig) -> Tracker | None:
    """The tracker ``--track-param NAME=VALUE`` tunes (the detector node's track_* parameters), or None."""
    if not config.tracking:
        return None
    changes = assignments(config.track_param, TrackerParams, "--track-param")
    try:
        return Tracker(settings_from_mapping(TrackerParams, changes))
    except ValueError as exc:
        raise BagToolError(f"tracker parameters: {exc}") from exc


def follower_options(config: EvalConfig, class_names) -> FollowerOptions:
    """How the follower node would run, from ``--follow-config`` and the options; bad values fail here."""
    node_config = read_follower_config(config.follow_config)
    try:
        node = settings_from_mapping(FollowerSettings, node_config)
    except ValueError as exc:
        raise BagToolError(f"follower parameters: {exc}") from exc
    follower = FollowerOptions(
        config=node_config,
        rate_hz=node.rate_hz if config.control_rate_hz is None else config.control_rate_hz,
        twist_stamped=config.twist_stamped or node.twist_stamped,
        frame_id=node.cmd_frame_id,
    )
    if not (math.isfinite(follower.rate_hz) and follower.rate_hz > 0):  # 0 or inf: a timer that never ends a tick
        raise BagToolError(f"the follower's rate must be a finite number > 0 Hz, got {follower.rate_hz}")
    # The real image size is known only at the first frame; any size checks the rest now.
    targets = follow_params(config, class_names, (480, 640), node_config)
    problem = class_mismatch(targets.target_classes, class_names, "the checkpoint's classes")
    if problem:
        print(f"bag_eval: warning: follower {problem}; choose with --follow-classes", file=sys.stderr)
    return follower


def read_follower_config(paths) -> dict:
    """The follower node's parameters from ``paths`` (none: an empty mapping); see :func:`read_params_files`."""
    try:
        return read_params_files(paths, "follower")
    except ValueError as exc:
        raise BagToolError(str(exc)) from exc


def follow_params(config: EvalConfig, class_names, image_shape, node_config: dict) -> FollowParams:
    """The follower's tuning for the bag, in increasing precedence.

    FollowParams defaults; the follower node's parameters ``node_config``; the bag's image size (the pixels
    the detections refer to, whatever the robot's file says); ``--follow-classes``;
    ``--follow-param name=value`` (values read as YAML: ``0.2``, ``true``, ``[Person, Stop Sign]``).
    """
    mapping = dict(node_config)
    mapping.update(image_height=int(image_shape[0]), image_width=int(image_shape[1]))
    if config.follow_classes:
        unknown = [c for c in config.follow_classes if c not in class_names]
        if unknown:
            raise BagToolError(f"--follow-classes {unknown} are not classes of the model {list(class_names)}")
        mapping["target_classes"] = list(config.follow_classes)
    mapping.update(assignments(config.follow_param, FollowParams, "--follow-param"))
    try:
        return settings_from_mapping(FollowParams, mapping)
    except ValueError as exc:
        raise BagToolError(f"follower parameters: {exc}") from exc


def assignments(options, settings_class, flag: str) -> dict:
    """The ``NAME=VALUE`` options ``flag`` gave, for fields of ``settings_class``; values read as YAML.

    ``BagToolError`` on an option that names no field; the values are converted and validated later, with the
    others, by :func:`~ssd_ros.settings.settings_from_mapping`.
    """
    known = sorted(f.name for f in dataclasses.fields(settings_class))
    mapping = {}
    for option in options:
        name, sep, text = option.partition("=")
        if not sep or name not in known:
            raise BagToolError(f"{flag} {option!r}: expected NAME=VALUE with NAME in {known}")
        mapping[name] = yaml.safe_load(text)
    return mapping
