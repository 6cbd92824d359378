"""ament_python package definition for ssd_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = "ssd_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["ssd_ros", "ssd_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ssd_ros maintainers",
    maintainer_email="maintainers@ssd-ros.dev",
    description="SSD300 detection and object following for the Adeept PiCar-B rover.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "detector = ssd_ros.ros.detector_node:main",
            "follower = ssd_ros.ros.follower_node:main",
            "follower_sim = ssd_ros.ros.follower_sim_node:main",
            "picar_base = ssd_ros.ros.picar_base_node:main",
            "bag_eval = ssd_ros.tools.bag_eval:main",
            "make_bag = ssd_ros.tools.make_bag:main",
            "bag_play = ssd_ros.tools.bag_play:main",
            "export_model = ssd_ros.tools.export_model:main",
        ],
    },
)
