"""Simulation: the closed-loop follower simulator (bicycle model, scripted routes, simulated detector).

May import ``control``, ``vision`` (detections) and ``settings``; the ROS node over it lives in ``ros``.
"""
