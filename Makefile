# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DDS stays on this host; each run picks its own domain unless the caller set one.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export MUJOCO_GL ?= egl

.PHONY: venv test demo bench clean

venv: $(STAMP)

# The ROS interface package (dsrl_interfaces) is built with plain cmake into the venv; editing a message rebuilds.
INTERFACES := ros2_ws/src/dsrl_interfaces
INTERFACE_SRCS := $(wildcard $(INTERFACES)/msg/*.msg) $(INTERFACES)/package.xml $(INTERFACES)/CMakeLists.txt \
	ros2_ws/build_interfaces.py

$(STAMP): pyproject.toml $(INTERFACE_SRCS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,ros-build]'
	$(PY) ros2_ws/build_interfaces.py
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The whole ROS 2 graph on the embedded sim, learning from scratch; bounded (override: make demo EPISODES=300
# MINUTES=30). Each run gets a fresh run directory: nothing earlier is overwritten.
EPISODES ?= 150
MINUTES ?= 14
demo: $(STAMP)
	$(VENV)/bin/dsrl-ros up robot_configs/sim_arm.yaml --episodes $(EPISODES) --max-minutes $(MINUTES) \
		--run-dir runs/demo_$$(date +%Y%m%d_%H%M%S)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
