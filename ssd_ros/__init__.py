"""ssd_ros: an SSD300 detector and a follow-the-object behaviour for a camera rover.

The package is layered, one room per domain, data flowing one way (camera -> vision -> control -> rover):

- ``vision``: the detector (model, card, checkpoints, backends, export, inference, image codec, drawing);
- ``evaluation``: VOC data, the VOC metric and its reports;
- ``control``: the tracker, the follow law, the camera model and the Ackermann geometry;
- ``rover``: the PiCar-B base driver and its hardware ports (the only code that touches I2C/GPIO);
- ``simulation``: the closed-loop follower simulator;
- ``ros``: thin ROS 2 adapters, one module per node; ``tools``: command-line tools over all of them.

``settings`` (parameter metadata) and ``cli`` (shared command-line and parameters-file reading) serve every room.
Every room but ``ros`` and ``tools`` is ROS-free; ``test/test_package.py`` enforces who may import whom.
"""

__version__ = "0.1.0"
