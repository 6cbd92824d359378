"""``bag_eval``: a detector checkpoint evaluated offline on a camera rosbag2, as the live nodes would run it.

The modules, in the order a run uses them:

* ``cli``: the command line (``main``, the console script), parsed once into a frozen ``config.EvalConfig``;
* ``config``: that config and what it builds: the detector, the tracker, the follower's settings;
* ``ground_truth``: VOC annotations per frame and MOT tracks to score against, checked before the model loads;
* ``replay``: the bag streamed through decode -> detect -> track -> write -> follow, on bag time;
* ``report``: the JSON report and its Markdown.
"""

from ssd_ros.tools.bag_eval.cli import main
from ssd_ros.tools.bag_eval.replay import ANNOTATED_TOPIC, CMD_VEL_TOPIC, DETECTIONS_TOPIC

__all__ = ["ANNOTATED_TOPIC", "CMD_VEL_TOPIC", "DETECTIONS_TOPIC", "main"]
