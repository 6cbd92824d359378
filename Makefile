.PHONY: setup test test-fast demo lint bench bench-pi
setup:  ## install and build everything (venv, ROS 2 Jazzy wheels, vision_msgs, ssd_ros)
	scripts/setup.sh
test:   ## run the whole test suite (local-only DDS, own ROS_DOMAIN_ID)
	scripts/test.sh
test-fast:  ## the tests that start no DDS participant and run no network or training (conftest marks the others)
	scripts/test.sh -m "not ros and not slow"
demo:   ## closed-loop rover demo without hardware [OUT=dir SCENARIO=static]; CHECKPOINT=best.pt|.onnx|.xml [BACKEND=auto] [IMAGES=dir | VIDEO=file] also runs the SSD on rover footage
	scripts/run.sh python -m ssd_ros.tools.demo $(if $(OUT),--out $(OUT)) $(if $(SCENARIO),--scenario $(SCENARIO)) \
	  $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(BACKEND),--backend $(BACKEND)) \
	  $(if $(IMAGES),--images $(IMAGES)) $(if $(VIDEO),--video $(VIDEO))
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
bench-pi:  ## on the robot (ROS 2 from apt, colcon workspace): the detector's tables for this CPU -> docs/benchmarks/inference_pi.md
	python3 benchmarks/bench_inference.py --pi $(if $(FRAMES),--frames $(FRAMES))
bench:  ## all benchmarks (minutes; results in docs/benchmarks/)
	for b in benchmarks/bench_*.py; do scripts/run.sh python $$b || exit 1; done
.PHONY: aarch64-check
aarch64-check:  ## root: the ROS-free suite and the detections under arm64 emulation (Debian root in .aarch64/; ~1 h the first time; docs/aarch64.md)
	scripts/aarch64_check.sh
