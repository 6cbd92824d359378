"""The ``detector`` node: camera images in, ``vision_msgs/Detection2DArray`` out.

Subscribes ``<image_topic>`` (``sensor_msgs/Image``) or ``<image_topic>/compressed``
(``sensor_msgs/CompressedImage``) and publishes

* ``detections`` (``vision_msgs/Detection2DArray``, header = the source image header),
* ``label_info`` (``vision_msgs/LabelInfo``, latched: transient local, reliable, depth 1),
* ``image_annotated`` (``sensor_msgs/Image`` rgb8, drawn only while someone subscribes; while a follower
  publishes ``follow_state``, its target, from ``follow_target``, is marked apart from the others),
* ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``, ~1 Hz).

Inference never queues frames: the subscription callback decodes the image and keeps only the newest
one (a frame replaced before the worker took it counts as dropped); a worker thread runs the model on
whatever is newest when it becomes free. A lifecycle node (:mod:`ssd_ros.ros.managed`): configure loads
the model, activate subscribes and starts the worker, deactivate leaves it idle, cleanup releases the model;
an :class:`~ssd_ros.ros.silence.InputWatcher` says why no image arrives. See ``docs/detector_node.md``.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import Detection2D, Detection2DArray, LabelInfo

from ssd_ros.control.tracking import Tracker, TrackerParams
from ssd_ros.ros.images import compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_msg
from ssd_ros.ros.managed import AUTOSTART, ManagedNode
from ssd_ros.ros.messages import LATCHED_QOS, detections_to_msg, diagnostics_msg, label_info_msg, stamp_ns
from ssd_ros.ros.params import ParameterTable, dataclass_table, param
from ssd_ros.ros.runner import StartupError, run_node
from ssd_ros.ros.silence import InputWatcher
from ssd_ros.settings import settings_from_mapping
from ssd_ros.vision.checkpoint import CheckpointError
from ssd_ros.vision.detector import Detector, DetectorSettings
from ssd_ros.vision.drawing import FollowMark, draw_detections
from ssd_ros.vision.image_codec import COMPRESSED_FORMATS, RAW_ENCODINGS, ImageDecodeError
from ssd_ros.vision.model import WeightsUnavailableError

# Parameters applied while running (the others are read-only: restart to change them); the first four are
# Detector attributes of the same name.
DETECTOR_SETTINGS = ("score_threshold", "nms_iou", "max_detections", "class_filter")
RUNTIME = (*DETECTOR_SETTINGS, "publish_annotated")

# What a camera driver must send (the rejection line of the input watcher names it).
BAD_FRAME_FIX = f"raw: {', '.join(RAW_ENCODINGS)}; compressed: {', '.join(COMPRESSED_FORMATS)}"
WARNING_INTERVAL_S = 5.0  # at most one bad-input warning and one processing error per interval
DIAGNOSTICS_PERIOD_S = 1.0
STATS_WINDOW = 100  # inference times / image ages kept for the percentiles


# The model and reporting settings come from DetectorSettings' fields; the others are the node's own.
PARAMETERS: ParameterTable = {
    **dataclass_table(DetectorSettings),
    "image_topic": param(
        "image_raw",
        "input image topic; with compressed=true the node subscribes <image_topic>/compressed (restart required)",
        read_only=True,
    ),
    "compressed": param(
        False,
        "subscribe sensor_msgs/CompressedImage (jpeg/png) on <image_topic>/compressed (restart required)",
        read_only=True,
    ),
    "qos_reliability": param(
        "best_effort",
        "input subscription reliability: best_effort (matches every camera) | reliable (restart required)",
        read_only=True,
    ),
    "qos_depth": param(
        5,
        "input subscription queue depth: frames the executor may take late without losing them; the worker "
        "still runs on the newest only (restart required)",
        limits=(1, 100),
        read_only=True,
    ),
    "publish_annotated": param(True, "draw detections on image_annotated (only while it has subscribers)"),
    "tracking": param(
        True,
        "track objects across frames: Detection2D.id is the track id, stable for the track's life, '' while "
        "unconfirmed (restart required)",
        read_only=True,
    ),
    # The tracker's tuning (ssd_ros.control.tracking.TrackerParams); score_threshold above is its lowest score used.
    **dataclass_table(TrackerParams, read_only=True),
    **AUTOSTART,
}

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


@dataclass
class _Frame:
    header: Header
    rgb: np.ndarray
    received_ns: int  # the node's clock when the message reached its callback


def _percentile_ms(values, q: float) -> str:
    return f"{np.percentile(np.asarray(values), q) * 1e3:.1f}" if values else "n/a"


class DetectorNode(ManagedNode):
    """Runs the SSD detector on the newest camera frame and publishes detections and diagnostics.

    A lifecycle node: configure loads the model, activate subscribes and starts the inference worker,
    deactivate unsubscribes and stops it (no frame reaches an inactive detector), cleanup releases the model.
    """

    def __init__(self) -> None:
        """Declare the parameters and start the diagnostics (configure loads the model)."""
        super().__init__("detector", PARAMETERS)
        self._detector: Detector | None = None
        self._tracker: Tracker | None = None
        self._model_name = ""
        self._watch: InputWatcher | None = None
        self._worker: threading.Thread | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Newest decoded frame and the counters shared between the callback, the worker and diagnostics.
        self._lock = threading.Condition()
        self._pending: _Frame | None = None
        self._stopping = False
        self._received = self._processed = self._dropped = self._bad = self._failed = 0
        self._inference_s: deque[float] = deque(maxlen=STATS_WINDOW)
        self._age_s: deque[float] = deque(maxlen=STATS_WINDOW)
        # Where a frame's time goes before the model: camera stamp -> callback (transport and executor), then
        # callback -> worker (decode and the hand-over to the inference thread).
        self._receive_s: deque[float] = deque(maxlen=STATS_WINDOW)
        self._wait_s: deque[float] = deque(maxlen=STATS_WINDOW)
        self._last_problem = ""
        # (start, received, processed, bad, failed) at the start of the current rate window
        self._window = (time.monotonic(), 0, 0, 0, 0)

        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # In every state (an unconfigured node says why); on the steady clock: with use_sim_time and a paused
        # bag it still reports.
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )

    # --- lifecycle --------------------------------------------------------------------------------------

    def configure(self, values: dict[str, object]) -> None:
        """Check the parameters, load the model and make the tracker (``StartupError`` naming the problem)."""
        reliability = values["qos_reliability"]
        if reliability not in _RELIABILITY:
            raise StartupError(f"qos_reliability must be one of {', '.join(_RELIABILITY)}, got {reliability!r}")
        self._values = values
        self._tracker = self._make_tracker(values)
        self._detector, self._model_name = self._load_detector(values)
        self._publish_annotated = values["publish_annotated"]

    def activate(self) -> None:
        """Publishers, the watched image subscription and, once they all exist, the inference worker."""
        values = self._values
        self._detections_pub = self.own(self.create_publisher(Detection2DArray, "detections", 10))
        self._annotated_pub = self.own(self.create_publisher(Image, "image_annotated", 1))
        self._label_info_pub = self.own(self.create_publisher(LabelInfo, "label_info", LATCHED_QOS))
        self._publish_label_info()
        # What the follower follows, for image_annotated: its newest choice (a frame older than the one drawn).
        self._follow_state, self._follow_id = "", ""
        self.own(self.create_subscription(String, "follow_state", self._on_follow_state, LATCHED_QOS))
        self.own(self.create_subscription(Detection2D, "follow_target", self._on_follow_target, 10))

        qos = QoSProfile(depth=values["qos_depth"], reliability=_RELIABILITY[values["qos_reliability"]])
        topic, compressed = values["image_topic"], values["compressed"]
        self._watch = self.own(_image_watcher(self, topic, compressed))
        if compressed:
            topic = topic.rstrip("/") + "/compressed"
            on_image = functools.partial(self._on_image, decode=compressed_msg_to_rgb)
        else:
            # rclpy hands each callback a message it has just taken, whose data array nobody else holds: an
            # rgb8 frame can stay a view of it (one 921 kB copy less per VGA frame, 0.06-0.27 ms).
            on_image = functools.partial(self._on_image, decode=functools.partial(image_msg_to_rgb, copy=False))
        # Only while active: frames the executor took for a subscription that deactivate destroyed would otherwise
        # wait for the next activate and be answered then, maybe minutes old.
        self._watch.subscribe(CompressedImage if compressed else Image, topic, self.while_active(on_image), qos)
        self.get_logger().info(
            f"{self._model_name}, {self._detector.backend} {self._detector.precision} "
            f"x{self._detector.num_threads} threads on {self._detector.device}: {self.resolve_topic_name(topic)} "
            f"({'CompressedImage' if compressed else 'Image'}, {values['qos_reliability']}, depth "
            f"{values['qos_depth']}) -> {self.resolve_topic_name('detections')}, "
            f"{len(self._detector.class_names)} classes, score_threshold {self._detector.score_threshold}"
        )
        # Last: a step above that raises (an image_topic rclpy refuses) fails the activation, which destroys
        # what was created; a worker started before it would stay parked on the condition, one more per retry.
        with self._lock:
            self._stopping = False
            # Rates count active time only: the first report after an activation starts here, not at the last
            # active report (its frames spread over the inactive time would say a fraction of the rate).
            self._window = (time.monotonic(), self._received, self._processed, self._bad, self._failed)
        self._worker = threading.Thread(target=self._run_worker, name="detector-worker", daemon=True)
        self._worker.start()

    def deactivate(self) -> None:
        """Stop the worker (after its current frame) before its publishers go; a frame still waiting is dropped."""
        self.stop_worker()
        with self._lock:
            if self._pending is not None:  # never processed: counted, or the totals would no longer add up
                self._dropped += 1
            self._pending = None

    def cleanup(self) -> None:
        """Release the model and the tracker."""
        self._detector = self._tracker = None
        self._model_name = ""

    # --- model and parameters -------------------------------------------------------------------------------

    def _load_detector(self, values: dict) -> tuple[Detector, str]:
        try:
            settings = settings_from_mapping(DetectorSettings, values)  # class_filter unset (None): all classes
            if settings.coco_model:
                detector = Detector.from_coco(architecture=settings.coco_model, **settings.detector_options())
                return detector, f"torchvision COCO {settings.coco_model}"
            path = settings.model_path
            if not path:
                raise StartupError(
                    "no model: set model_path to a checkpoint or export (or coco_model:=ssdlite320_mobilenet_v3)"
                )
            detector = Detector.from_checkpoint(path, **settings.detector_options())
        except (CheckpointError, WeightsUnavailableError) as error:
            raise StartupError(str(error)) from error
        except ValueError as error:  # a device that does not exist here, an out-of-range setting, a wrong class
            raise StartupError(str(error)) from error
        return detector, f"{detector.card.architecture} ({path})"

    @staticmethod
    def _make_tracker(values: dict) -> Tracker | None:
        if not values["tracking"]:
            return None
        try:
            return Tracker(settings_from_mapping(TrackerParams, values))
        except ValueError as error:  # rclpy checked each range; a cross-check (low > high score) failed
            raise StartupError(str(error)) from error

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Apply runtime changes all together or not at all; the Detector's setters validate the values."""
        changes = {p.name: p.value for p in parameters if p.name in RUNTIME}
        if self._detector is None:  # unconfigured: configure reads and checks them
            return SetParametersResult(successful=True)
        before = {name: getattr(self._detector, name) for name in DETECTOR_SETTINGS}
        try:
            for name, value in changes.items():
                if name in DETECTOR_SETTINGS:
                    setattr(self._detector, name, value)  # an empty class_filter means no filter
        except ValueError as error:
            for name, value in before.items():
                setattr(self._detector, name, value)
            return SetParametersResult(successful=False, reason=str(error))
        if "publish_annotated" in changes:
            self._publish_annotated = bool(changes["publish_annotated"])
        if changes:
            self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        if "score_threshold" in changes and self.active:
            self._publish_label_info()
        return SetParametersResult(successful=True)

    def _publish_label_info(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self._label_info_pub.publish(
            label_info_msg(tuple(self._detector.class_names), self._detector.score_threshold, header)
        )

    # --- input ------------------------------------------------------------------------------------------

    def _on_image(self, msg, decode) -> None:
        """Decode and keep only the newest frame; the worker picks it up."""
        received_ns = self.get_clock().now().nanoseconds
        try:
            rgb = decode(msg)
        except Exception as error:  # noqa: BLE001 - any message that does not decode is a bad frame, never a dead node
            problem = str(error) if isinstance(error, ImageDecodeError) else f"{type(error).__name__}: {error}"
            with self._lock:
                self._received += 1
                self._bad += 1
                self._last_problem = problem
            self._watch.rejected(f"{problem}; fix the camera driver's encoding ({BAD_FRAME_FIX})")
            # Every bad frame is counted in diagnostics; the log says what is wrong, not how often.
            self.get_logger().warning(
                f"bad image in frame {msg.header.frame_id!r} dropped: {problem}",
                throttle_duration_sec=WARNING_INTERVAL_S,
            )
            return
        self._watch.accepted()
        with self._lock:
            self._received += 1
            if self._pending is not None:
                self._dropped += 1
            self._pending = _Frame(msg.header, rgb, received_ns)
            self._lock.notify()

    # --- worker -----------------------------------------------------------------------------------------

    def _run_worker(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                frame, self._pending = self._pending, None
            try:
                self._process(frame)
            except Exception as error:  # noqa: BLE001 - the node must outlive any single frame
                if self._stopping or not rclpy.ok(context=self.context):
                    return
                problem = f"processing failed: {type(error).__name__}: {error}"
                with self._lock:
                    self._failed += 1
                    self._last_problem = problem
                self.get_logger().error(problem, throttle_duration_sec=WARNING_INTERVAL_S)

    def _process(self, frame: _Frame) -> None:
        started_ns = self.get_clock().now().nanoseconds
        start = time.perf_counter()
        detections = self._detector(frame.rgb)
        inference_s = time.perf_counter() - start
        if self._tracker is not None:  # only this worker thread touches it; frames in arrival order
            detections = self._tracker.update(detections, stamp_ns(frame.header) * 1e-9)
        self._detections_pub.publish(detections_to_msg(detections, frame.header))
        age_s = (self.get_clock().now().nanoseconds - stamp_ns(frame.header)) * 1e-9
        if self._publish_annotated and self._annotated_pub.get_subscription_count() > 0:
            drawn = draw_detections(frame.rgb, detections, follow=self._follow_mark())
            self._annotated_pub.publish(rgb_to_image_msg(drawn, frame.header))
        with self._lock:
            self._processed += 1
            self._inference_s.append(inference_s)
            self._age_s.append(age_s)
            self._receive_s.append((frame.received_ns - stamp_ns(frame.header)) * 1e-9)
            self._wait_s.append((started_ns - frame.received_ns) * 1e-9)

    def _on_follow_state(self, msg: String) -> None:
        self._follow_state = msg.data

    def _on_follow_target(self, msg: Detection2D) -> None:
        self._follow_id = msg.id

    def _follow_mark(self) -> FollowMark | None:
        """The follower's state and target to draw; None while no follower publishes (a dead one's state is stale)."""
        state = self._follow_state
        if not state or self.count_publishers("follow_state") == 0:
            return None
        try:
            return FollowMark(state, self._follow_id)
        except ValueError as error:  # another follower's vocabulary: draw plainly, say it once in a while
            self.get_logger().warning(f"follow_state: {error}; drawn without it", throttle_duration_sec=30.0)
            return None

    # --- diagnostics ------------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        if (status := self.lifecycle_status()) is not None:
            level, message = status
            values = {"lifecycle_state": self.state_label, "model": self._model_name}
            self._diagnostics_pub.publish(diagnostics_msg(self, "inference", level, message, "", values))
            return
        now = time.monotonic()
        with self._lock:
            start, received, processed, bad, failed = self._window
            elapsed = max(now - start, 1e-6)
            input_hz = (self._received - received) / elapsed
            processed_hz = (self._processed - processed) / elapsed
            new_bad, new_failed = self._bad - bad, self._failed - failed
            self._window = (now, self._received, self._processed, self._bad, self._failed)
            inference, ages = list(self._inference_s), list(self._age_s)
            receive, wait = list(self._receive_s), list(self._wait_s)
            counters = {
                "received": self._received,
                "processed": self._processed,
                "dropped_frames": self._dropped,
                "bad_frames": self._bad,
                "failed_frames": self._failed,
            }
            last_problem = self._last_problem
        if new_failed:
            level, message = DiagnosticStatus.ERROR, f"{new_failed} frame(s) failed in processing"
        elif new_bad and processed_hz == 0.0:
            level, message = DiagnosticStatus.WARN, f"{new_bad} bad frame(s) and none processed"
        elif input_hz == 0.0:
            level, message = DiagnosticStatus.WARN, "no input images"
            if self._watch.problem:  # why, when the watcher knows
                message += f": {self._watch.problem}"
        elif processed_hz == 0.0 and not inference:
            level, message = DiagnosticStatus.WARN, "images arrive but none was processed yet"
        else:
            level, message = DiagnosticStatus.OK, "running"
        values = {
            "input_rate_hz": f"{input_hz:.2f}",
            "processed_rate_hz": f"{processed_hz:.2f}",
            "inference_time_p50_ms": _percentile_ms(inference, 50),
            "inference_time_p95_ms": _percentile_ms(inference, 95),
            "image_age_at_publish_mean_ms": f"{np.mean(ages) * 1e3:.1f}" if ages else "n/a",
            "image_age_at_publish_p50_ms": _percentile_ms(ages, 50),
            "image_age_at_publish_p95_ms": _percentile_ms(ages, 95),
            "receive_delay_p50_ms": _percentile_ms(receive, 50),
            "queue_wait_p50_ms": _percentile_ms(wait, 50),
            **{name: str(count) for name, count in counters.items()},
            "last_bad_frame": last_problem,
            "device": str(self._detector.device),
            "backend": self._detector.backend,
            "precision": self._detector.precision,
            "num_threads": str(self._detector.num_threads),
            "model": self._model_name,
            "score_threshold": f"{self._detector.score_threshold:g}",
            "lifecycle_state": self.state_label,
            "input_problem": self._watch.problem or "",
        }
        device = str(self._detector.device)
        self._diagnostics_pub.publish(diagnostics_msg(self, "inference", level, message, device, values))

    # --- shutdown ---------------------------------------------------------------------------------------

    def stop_worker(self, timeout_s: float = 10.0) -> None:
        """Ask the worker to finish (after its current frame) and wait for it."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout_s)
            self._worker = None

    def destroy_node(self) -> None:
        """Stop the worker before the publishers it uses go away."""
        if getattr(self, "_worker", None) is not None:
            self.stop_worker()
        super().destroy_node()


def _image_watcher(node: Node, image_topic: str, compressed: bool) -> InputWatcher:
    """The input watcher of the image subscription, with the fixes for raw vs compressed topics."""
    image, compressed_image = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"

    def to_compressed(topic: str) -> str:  # the node reads <image_topic>/compressed
        if topic.endswith("/compressed"):
            return f"set -p compressed:=true -p image_topic:={topic.removesuffix('/compressed')}"
        return f"set -p compressed:=true and remap -r {image_topic.rstrip('/')}/compressed:={topic}"

    def to_raw(topic: str) -> str:
        return f"set -p compressed:=false -p image_topic:={topic}" if compressed else f"set -p image_topic:={topic}"

    return InputWatcher(
        node,
        "image",
        topic_fix=to_compressed if compressed else to_raw,
        other_forms={image: to_raw} if compressed else {compressed_image: to_compressed},
        qos_fixes={QoSPolicyKind.RELIABILITY: "set -p qos_reliability:=best_effort (matches every publisher)"},
    )


def main(args=None) -> int:
    """Run the detector node until Ctrl-C; exit code 1 (with the reason, no traceback) if it cannot start."""
    return run_node("detector", DetectorNode, args=args, parameters=PARAMETERS)


if __name__ == "__main__":
    sys.exit(main())
