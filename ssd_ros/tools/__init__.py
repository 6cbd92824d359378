"""Offline tools built on the core and the ROS adapters (bag evaluation, bag creation)."""
