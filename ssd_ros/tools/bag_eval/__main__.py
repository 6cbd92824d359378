"""``python -m ssd_ros.tools.bag_eval``: the same as the ``bag_eval`` executable."""

import sys

from ssd_ros.tools.bag_eval.cli import main

sys.exit(main())
