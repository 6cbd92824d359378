"""ssd_ros: an SSD300 detector and a follow-the-object behaviour for a camera rover.

The package is layered: the modules directly in ``ssd_ros`` are the ROS-free core
(model, checkpoints, inference, metric, control, drawing); ``ssd_ros.ros`` holds the
thin ROS 2 adapters; ``ssd_ros.hardware`` the only code that touches I2C/GPIO.
"""

__version__ = "0.1.0"
