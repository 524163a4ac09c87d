"""The process environment of every node, and the exit codes the supervisor reads (no rclpy import).

Kept apart from `nodes/ros_io.py` (message conversions, rclpy) so the supervisor and `dsrl-ros up` can start,
watch and stop nodes without loading ROS or torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# A node that exits with one of these cannot be helped by a restart: the supervisor stops the run with the
# node's error line (Supervisor._last_error). CONFIG_ERROR: a bad config, checkpoint, path or corrupt file found
# at start.
# RESOURCE_ERROR: the machine cannot hold the run's data any more (disk full).
CONFIG_ERROR_EXIT = 2
RESOURCE_ERROR_EXIT = 3
FATAL_EXIT_CODES = (CONFIG_ERROR_EXIT, RESOURCE_ERROR_EXIT)


def node_error_prefix(name: str) -> str:
    """How a node's one-line error starts on stderr (run_node writes it, the supervisor looks for it)."""
    return f"{name}: error: "

# Environment variable set by the launcher (supervisor or launch file): one id per session of the graph, so the
# episode manager can tell its own restart from a new session on the same run directory.
SESSION_ENV = "DSRL_SESSION_ID"
# Set by the supervisor in each child's environment: the child arms a parent-death signal for that pid.
SUPERVISOR_PID_ENV = "DSRL_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def die_with_supervisor() -> None:
    """Under `dsrl-ros up`: this process gets SIGTERM (a clean rclpy shutdown) when the supervisor dies, however
    it dies (SIGKILL included), so no node outlives it. Linux only; a no-op when not started by the supervisor."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(supervisor):     # it died before the signal was armed
        os._exit(1)


_stop_requests: list[int] = []


def note_stop_requests() -> None:
    """SIGINT (Ctrl-C, the supervisor's stop) is noted, never raised as KeyboardInterrupt, for the whole life of a
    node process. Raised, it lands wherever the main thread is, often inside an extension module: numpy left
    half-initialised, or CPython's "unhandled KeyboardInterrupt" flag set by code run through PyRun_String even
    though the node caught the exception, so a clean stop exited killed-by-SIGINT. rclpy chains its own handler
    to this one, so a stop during spin still shuts the context down (rclpy.spin ends with
    ExternalShutdownException); a stop before spin is read with `stop_requested()`. Idempotent."""
    signal.signal(signal.SIGINT, lambda signum, _frame: _stop_requests.append(signum))


def stop_requested() -> bool:
    return bool(_stop_requests)


def ros_environment(config=None, base: dict | None = None) -> dict[str, str]:
    """Environment for a node process: DDS on localhost unless the config says otherwise, large-data transport
    for images, one torch/BLAS thread per process (several nodes share the cores). Values already set win.
    `config`: a StackConfig (its `ros` section), or None for the defaults."""
    env = dict(os.environ if base is None else base)
    ros = config.ros if config is not None else None
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", ros.discovery_range if ros else "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(ros.domain_id if ros else 42))
    if ros is None or ros.large_data:
        env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    if ros is not None and ros.security:
        # Asked for: enforce it, so a ROS install without DDS security fails closed at node creation.
        env.update({"ROS_SECURITY_ENABLE": "true", "ROS_SECURITY_STRATEGY": "Enforce",
                    "ROS_SECURITY_KEYSTORE": os.path.abspath(ros.security_keystore)})
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
