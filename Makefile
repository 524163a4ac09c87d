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
# MINUTES=30). Each run gets a fresh run directory: nothing earlier is overwritten. DSRL-NA, the config's learner
# (with the object_moments state input it beats DSRL-SAC: docs/results.md); DEMO_ALGO=sac runs DSRL-SAC with the
# settings of docs/results.md.
EPISODES ?= 150
MINUTES ?= 14
DEMO_ALGO ?= na
demo: $(STAMP)
	$(VENV)/bin/dsrl-ros up robot_configs/sim_arm.yaml --episodes $(EPISODES) --max-minutes $(MINUTES) \
		--run-dir runs/demo_$$(date +%Y%m%d_%H%M%S) --set learner.algo=$(DEMO_ALGO) \
		$(if $(filter sac,$(DEMO_ALGO)),--set learner.utd=10 --set learner.target_entropy=-20)

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
