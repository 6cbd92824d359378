"""Thin ROS 2 adapters around the ssd_ros core (one module per node, plus message conversion)."""
