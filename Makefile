.PHONY: setup test demo bench lint
setup:  ## install and build everything (venv, ROS 2 Jazzy wheels, vision_msgs, ssd_ros)
	scripts/setup.sh
test:   ## run the whole test suite
	scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
