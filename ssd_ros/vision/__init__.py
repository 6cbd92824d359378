"""Vision: RGB images in, :class:`~ssd_ros.vision.detections.Detections` out.

The one model builder (training and nodes), model cards and checkpoints, the inference backends (torch, ONNX
Runtime, OpenVINO) and export, the shared pre/post-processing, the image codec and drawing.
Imports only ``ssd_ros.settings`` from the package: every other room may use it, it uses none of them.
"""
