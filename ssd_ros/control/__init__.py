"""Control: from detections to a motion command.

The multi-object tracker, the follow law and its loop, the pinhole camera model and the Ackermann geometry.
May import ``vision`` (the detections type) and ``settings``; it never touches hardware.
"""
