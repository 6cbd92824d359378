"""Workstation-side training of the ssd_ros detector (imports the core, never the ROS adapters)."""
