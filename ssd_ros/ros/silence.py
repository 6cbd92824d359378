"""Nodes that say why nothing arrives: an input watcher per subscription, and a check of the parameters given.

A silent node is the most frequent complaint about ROS detector packages, and its causes are few: nobody
publishes the topic read (a name or a type that does not match the camera's: raw vs compressed, Twist vs
TwistStamped), a publisher whose QoS is incompatible (DDS then delivers nothing, without an error), messages
that arrive but are all rejected, or a parameter that was never applied because its name has a typo.
:class:`InputWatcher` notices the first three within a few seconds; :func:`warn_undeclared_parameters` the
last one at start-up. Each logs one line naming the fix and keeps the problem for the node's diagnostics.

The texts come from ROS-free functions (:func:`closest_name`, :func:`undeclared_parameter_warnings`,
:func:`missing_publisher_advice`, :func:`incompatible_qos_advice`) so they can be read and tested alone.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from rclpy.clock import Clock, ClockType
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind, QoSProfile

# How long a subscription may go without any publisher before the node says so: discovery between two
# processes on one machine takes well under a second, a loaded one a little more.
NO_PUBLISHER_GRACE_S = 3.0
CHECK_PERIOD_S = 1.0
# Messages are judged in windows this long: all rejected in one window (none used) is reported.
REJECT_WINDOW_S = 2.0
# The rejection line is logged when it starts, then at most this often while it goes on (with the count).
REJECT_LOG_INTERVAL_S = 30.0

# A fix for a topic: given the name of a topic that exists, the parameters or remap that make the node read it.
TopicFix = Callable[[str], str]


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The entry of ``names`` most like ``name`` (difflib's ratio, at least 0.6), or None."""
    matches = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


def undeclared_parameter_warnings(given: Iterable[str], declared: Iterable[str], node_name: str) -> list[str]:
    """One line per parameter in ``given`` that ``declared`` lacks, naming the closest declared name.

    rclpy ignores such a value without a word, so ``-p scor_threshold:=0.5`` leaves score_threshold at its
    default. Names rclpy declares on demand (``qos_overrides.*``) are never reported.
    """
    declared = sorted(declared)
    lines = []
    for name in sorted(set(given) - set(declared)):
        if name.startswith("qos_overrides."):
            continue
        guess = closest_name(name, declared)
        hint = f"did you mean {guess!r}?" if guess else f"`{node_name} --help` lists the parameters"
        lines.append(f"parameter {name!r} is not a parameter of {node_name} and is ignored; {hint}")
    return lines


def warn_undeclared_parameters(node: Node) -> list[str]:
    """Log :func:`undeclared_parameter_warnings` for the overrides given to ``node`` (call after declaring)."""
    # Jazzy's rclpy has no public accessor for the overrides (command line and parameter files, for this node
    # and for /**); the private dict is where Node.declare_parameter itself reads them.
    given = node._parameter_overrides  # noqa: SLF001
    lines = undeclared_parameter_warnings(given, node._parameters, node.get_name())  # noqa: SLF001
    for line in lines:
        node.get_logger().warning(line)
    return lines


def short_type(type_name: str) -> str:
    """``sensor_msgs/msg/Image`` -> ``Image``."""
    return type_name.rsplit("/", 1)[-1]


def missing_publisher_advice(
    topic: str,
    type_name: str,
    published: Iterable[tuple[str, str]],
    topic_fix: TopicFix,
    other_forms: Mapping[str, TopicFix],
) -> str:
    """Why ``topic`` (``type_name``) is silent, and the published topics that would do with what to set.

    Those of the same type and of the other forms (``other_forms``: type name -> fix, e.g. CompressedImage
    for an Image reader); ``published``: (topic, type) of the publishers in the graph.
    """
    text = f"no {short_type(type_name)} publisher on {topic}"
    published = sorted(set(published))
    offers = []
    for wanted, fix in [(type_name, topic_fix), *other_forms.items()]:
        found = [name for name, kind in published if kind == wanted and (name, kind) != (topic, type_name)]
        offers += [f"{name} ({short_type(wanted)}): {fix(name)}" for name in found]
    if offers:
        return f"{text}; topics that would do: " + "; ".join(offers)
    kinds = " or ".join(short_type(name) for name in [type_name, *other_forms])
    return f"{text}, and no {kinds} topic exists: is the publisher running, with the same ROS_DOMAIN_ID?"


_POLICY_FIELDS = {
    QoSPolicyKind.RELIABILITY: ("reliability",),
    QoSPolicyKind.DURABILITY: ("durability",),
    QoSPolicyKind.DEADLINE: ("deadline",),
    QoSPolicyKind.LIVELINESS: ("liveliness", "liveliness_lease_duration"),
}


def _policy_value(profile: QoSProfile, field: str) -> str:
    value = getattr(profile, field)
    return value.name if hasattr(value, "name") else str(value)


def incompatible_qos_advice(
    topic: str,
    policy: QoSPolicyKind,
    requested: QoSProfile,
    offered: Sequence[tuple[str, QoSProfile]],
    fixes: Mapping[QoSPolicyKind, str],
) -> str:
    """Why a publisher on ``topic`` is not heard: its ``policy`` against this subscription's (``requested``).

    ``offered``: (publishing node, its QoS) for each publisher; ``fixes``: what to change here for a policy,
    else the publisher has to change.
    """
    fields = _POLICY_FIELDS.get(policy, ())
    ours = ", ".join(f"{field} {_policy_value(requested, field)}" for field in fields) or policy.name
    theirs = "; ".join(
        f"{node} offers " + (", ".join(f"{field} {_policy_value(qos, field)}" for field in fields) or policy.name)
        for node, qos in offered
    )
    fix = fixes.get(policy, f"make the publisher's {policy.name.lower()} compatible")
    return (
        f"a publisher on {topic} has incompatible QoS ({policy.name}), no message of it is delivered: "
        f"{theirs or 'the publisher is gone'}; this subscription requests {ours}; fix: {fix}"
    )


class InputWatcher:
    """Watches one subscription and says, once per change and throttled, why nothing usable arrives on it.

    Create the subscription with :meth:`subscribe`; the node reports each message as :meth:`accepted` or
    :meth:`rejected` (with the reason); :attr:`problem` is the current explanation for diagnostics (None
    while all is well). :meth:`destroy` removes the subscription and the watcher's timer.
    """

    def __init__(
        self,
        node: Node,
        what: str,
        *,
        topic_fix: TopicFix,
        other_forms: Mapping[str, TopicFix] | None = None,
        qos_fixes: Mapping[QoSPolicyKind, str] | None = None,
    ):
        """``what`` names the input in the log ("image", "cmd_vel"); the fixes are as in the advice functions."""
        self._node = node
        self._what = what
        self._topic_fix = topic_fix
        self._other_forms = dict(other_forms or {})
        self._qos_fixes = dict(qos_fixes or {})
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.topic = ""
        self.subscription = None
        self._timer = None
        self._problems: dict[str, str] = {}  # kind -> explanation
        self._started_s = self._window_start_s = 0.0
        self._accepted = self._rejected = 0  # in the current window
        self._last_reason = ""
        self._reject_logged_s: float | None = None
        self.rejected_total = 0

    def subscribe(self, msg_type, topic: str, callback, qos: QoSProfile):
        """Create the watched subscription (with the incompatible-QoS event) and start watching it."""
        self.topic = self._node.resolve_topic_name(topic)
        self._type_name = _type_name(msg_type)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self.subscription = self._node.create_subscription(msg_type, topic, callback, qos, event_callbacks=events)
        self._started_s = self._window_start_s = time.monotonic()
        self._timer = self._node.create_timer(CHECK_PERIOD_S, self.check, clock=self._steady)
        return self.subscription

    @property
    def problem(self) -> str | None:
        """Why nothing usable arrives, as far as the watcher knows, or None."""
        return "; ".join(self._problems.values()) or None

    def accepted(self) -> None:
        """A message was used."""
        self._accepted += 1
        self._clear("incompatible_qos")

    def rejected(self, reason: str) -> None:
        """A message arrived but could not be used, for ``reason`` (which says what to fix)."""
        self._rejected += 1
        self.rejected_total += 1
        self._last_reason = reason

    def check(self) -> None:
        """Called every second: publishers present, and the last window's messages."""
        now = time.monotonic()
        # A publisher of another type on the same name (TwistStamped on a Twist reader) delivers nothing either.
        if not any(info.topic_type == self._type_name for info in self._node.get_publishers_info_by_topic(self.topic)):
            if now - self._started_s >= NO_PUBLISHER_GRACE_S:
                advice = missing_publisher_advice(
                    self.topic, self._type_name, self._published(), self._topic_fix, self._other_forms
                )
                self._report("no_publisher", advice)
            self._clear("incompatible_qos")
        elif "no_publisher" in self._problems:
            self._clear("no_publisher", f"{self._what}: {self.topic} has a publisher now")
        if now - self._window_start_s < REJECT_WINDOW_S:
            return
        if self._rejected and not self._accepted:
            text = (
                f"{self._rejected} message(s) on {self.topic} in the last {now - self._window_start_s:.0f} s, "
                f"all rejected ({self.rejected_total} so far): {self._last_reason}"
            )
            again = self._reject_logged_s is None or now - self._reject_logged_s >= REJECT_LOG_INTERVAL_S
            self._problems["rejected"] = text
            if again:
                self._reject_logged_s = now
                self._node.get_logger().warning(f"{self._what}: {text}")
        else:  # something used, or nothing arrived (then the publisher checks above say why)
            self._clear("rejected")
            if self._accepted:
                self._reject_logged_s = None
        self._window_start_s, self._accepted, self._rejected = now, 0, 0

    def destroy(self) -> None:
        """Remove the subscription and the timer (a deactivated node watches nothing)."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        if self.subscription is not None:
            self._node.destroy_subscription(self.subscription)
        self._timer = self.subscription = None
        self._problems.clear()

    def _published(self) -> list[tuple[str, str]]:
        """(topic, type) of every publisher of the watched type or its other forms, this node's own left out.

        The detector's own ``image_annotated`` is an Image too: offered as its input it would read its output.
        """
        wanted = {self._type_name, *self._other_forms}
        me = (self._node.get_name(), self._node.get_namespace())
        return [
            (name, info.topic_type)
            for name, types in self._node.get_topic_names_and_types()
            if wanted.intersection(types)
            for info in self._node.get_publishers_info_by_topic(name)
            if (info.node_name, info.node_namespace) != me
        ]

    def _on_incompatible_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        offered = [(info.node_name, info.qos_profile) for info in self._node.get_publishers_info_by_topic(self.topic)]
        policy = QoSPolicyKind(event.last_policy_kind)
        requested = self.subscription.qos_profile
        # Only publishers that differ from this subscription in the policy are worth naming.
        fields = _POLICY_FIELDS.get(policy, ())
        differing = [(n, q) for n, q in offered if any(getattr(q, f) != getattr(requested, f) for f in fields)]
        advice = incompatible_qos_advice(self.topic, policy, requested, differing or offered, self._qos_fixes)
        self._report("incompatible_qos", advice)

    def _report(self, kind: str, text: str) -> None:
        # Said again only when the advice changes: a camera started late, under another name, is news.
        if self._problems.get(kind) != text:
            self._node.get_logger().warning(f"{self._what}: {text}")
        self._problems[kind] = text

    def _clear(self, kind: str, news: str = "") -> None:
        if self._problems.pop(kind, None) is not None and news:
            self._node.get_logger().info(news)


def _type_name(msg_type) -> str:
    """``sensor_msgs/msg/Image`` for the Image class, as the ROS graph names types."""
    module = msg_type.__module__.split(".")  # sensor_msgs.msg._image
    return f"{module[0]}/{module[1]}/{msg_type.__name__}"


def cmd_vel_watcher(node: Node, stamped: bool) -> InputWatcher:
    """The watcher of a ``cmd_vel`` reader of Twist (or TwistStamped with ``stamped``), with the fixes."""
    twist, twist_stamped = "geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"
    return InputWatcher(
        node,
        "cmd_vel",
        topic_fix=lambda topic: f"remap -r cmd_vel:={topic}",
        other_forms={
            (twist if stamped else twist_stamped): lambda topic: (
                f"set -p twist_stamped:={str(not stamped).lower()}"
                + ("" if topic == node.resolve_topic_name("cmd_vel") else f" and remap -r cmd_vel:={topic}")
            )
        },
    )
