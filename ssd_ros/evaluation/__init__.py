"""Evaluation: VOC-format data, the VOC07/VOC12 metric and its tables and curves.

May import ``vision`` (detections, image reading) and ``settings``; nothing that controls or drives the rover.
"""
