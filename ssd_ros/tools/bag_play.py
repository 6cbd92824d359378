"""Replay a rosbag2 (MCAP or sqlite3) onto the ROS graph, with an optional /clock.

``ros2 bag play`` is not available where ROS 2 comes from PyPI (no rosbag2 wheels), so this is
the project's player: it reads with the pure-Python ``rosbags`` library and publishes the stored
CDR bytes unchanged (rclpy publishes serialized messages directly), at the recorded pace.
With ``--clock`` it publishes bag time on ``/clock`` so nodes run with ``use_sim_time:=true``
judge message age against bag time, exactly as with ``ros2 bag play --clock``: at every message and, between
messages, at ``--clock-hz`` (40 by default, as ``ros2 bag play``), so a node's timers (the follower's control
loop) tick at their own rate rather than once per camera frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosbags.interfaces import QosDurability
from rosgraph_msgs.msg import Clock

from ssd_ros.tools.bagio import BagToolError, message_class, open_bag


def _qos(connection) -> QoSProfile:
    """Reliable, depth 10 (matches reliable and best-effort readers); transient local where it was recorded so.

    A latched topic (``/tf_static``, a map) has readers that ask for transient local durability, which a
    volatile writer does not match: as ``ros2 bag play`` does, its recorded durability is offered again.
    """
    offered = getattr(connection.ext, "offered_qos_profiles", None) or []
    latched = any(profile.durability == QosDurability.TRANSIENT_LOCAL for profile in offered)
    durability = QoSDurabilityPolicy.TRANSIENT_LOCAL if latched else QoSDurabilityPolicy.VOLATILE
    return QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=durability)


def _wait_for_discovery(publishers: list, timeout_s: float) -> None:
    """Wait until every topic has a matched subscriber, at most ``timeout_s``.

    Messages sent before a subscriber has discovered its publisher are lost to it, and discovery takes longer on a
    loaded machine than any fixed pause would allow for.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in publishers):
        time.sleep(0.05)


class _Clock:
    """Bag time on ``/clock``, published at a steady wall rate while playback waits for the next message."""

    def __init__(self, node, clock_hz: float) -> None:
        self.publisher = node.create_publisher(Clock, "/clock", 10)
        self._period_s = 1.0 / clock_hz

    def publish(self, stamp_ns: int) -> None:
        """Publish ``stamp_ns`` as the current bag time."""
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
        self.publisher.publish(msg)

    def wait_until(self, wall_s: float, stamp_ns: int, wall_start: float, bag_start_ns: int, rate: float) -> None:
        """Sleep until monotonic time ``wall_s`` (bag time ``stamp_ns``), publishing the bag time of each tick."""
        while (now := time.monotonic()) < wall_s:
            # Never past the next message's stamp: bag time does not go back when that message comes.
            self.publish(min(stamp_ns, bag_start_ns + (now - wall_start) * rate * 1e9))
            time.sleep(min(self._period_s, wall_s - now))


def play(
    bag: Path, *, topics: list[str] | None, rate: float, clock_hz: float | None, loop: bool, start_delay_s: float
) -> int:
    """Publish the bag's messages (and bag time on ``/clock`` at ``clock_hz``, if given); returns how many."""
    node = rclpy.create_node("bag_player")
    published = 0
    try:
        with open_bag(bag) as (reader, salvage_note):
            if salvage_note:
                node.get_logger().warning(salvage_note)
            connections = [c for c in reader.connections if not topics or c.topic in topics]
            if not connections:
                available = sorted({c.topic for c in reader.connections})
                raise SystemExit(f"bag_play: none of {topics} in {bag}; topics there: {available}")
            publishers = {}
            for connection in connections:
                try:
                    msg_class = message_class(connection.msgtype)
                except BagToolError as error:
                    # Robot bags often hold custom types: play the rest rather than nothing.
                    node.get_logger().warning(f"skipping {connection.topic}: {error}")
                    continue
                publishers[connection.id] = node.create_publisher(msg_class, connection.topic, _qos(connection))
            if not publishers:
                raise SystemExit(f"bag_play: no topic of {bag} has an installed message type")
            connections = [c for c in connections if c.id in publishers]
            bag_clock = _Clock(node, clock_hz) if clock_hz else None
            # /clock too: a use_sim_time node that has not matched it yet would miss the bag's first instants.
            writers = [*publishers.values(), *([bag_clock.publisher] if bag_clock else [])]
            _wait_for_discovery(writers, start_delay_s)
            while True:
                wall_start, bag_start = time.monotonic(), None
                for connection, stamp_ns, raw in reader.messages(connections=connections):
                    bag_start = stamp_ns if bag_start is None else bag_start
                    due = wall_start + (stamp_ns - bag_start) / 1e9 / rate
                    if bag_clock is not None:
                        bag_clock.wait_until(due, stamp_ns, wall_start, bag_start, rate)
                        bag_clock.publish(stamp_ns)
                    elif due > time.monotonic():
                        time.sleep(due - time.monotonic())
                    publishers[connection.id].publish(bytes(raw))
                    published += 1
                if not loop:
                    break
            # Reliable readers must have the last messages before the writers go away with the process.
            for writer in writers:
                writer.wait_for_all_acked(Duration(seconds=2))
    finally:
        node.destroy_node()
    return published


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``bag_play BAG [--topics ...] [--rate R] [--clock] [--loop]``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="rosbag2 directory (or .mcap / .db3 file)")
    parser.add_argument("--topics", nargs="*", help="topics to play (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--clock", action="store_true", help="publish bag time on /clock (for use_sim_time)")
    parser.add_argument(
        "--clock-hz",
        type=float,
        default=40.0,
        help="with --clock: bag time is published at every message and this often between them (default 40, as "
        "ros2 bag play's)",
    )
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument(
        "--start-delay",
        type=float,
        default=1.0,
        help="at most this many seconds to wait for every topic's subscribers to be discovered (default 1)",
    )
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if args.clock_hz <= 0:
        parser.error("--clock-hz must be positive")
    if not args.bag.exists():  # a usage error (exit 2, like the other tools), found before DDS starts
        parser.error(f"bag {args.bag}: no such file or directory")
    rclpy.init(args=argv)
    try:
        options = dict(
            topics=args.topics, rate=args.rate, clock_hz=args.clock_hz if args.clock else None, loop=args.loop
        )
        count = play(args.bag, start_delay_s=args.start_delay, **options)
        print(f"bag_play: published {count} messages from {args.bag}")
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except Exception as error:  # noqa: BLE001 - a damaged bag must end with a message, not a traceback
        print(f"bag_play: cannot play {args.bag}: {error}", file=sys.stderr)
        return 1
    finally:
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
