"""Headless OpenGL backend choice for MuJoCo. Must run before the first `import mujoco` in the process.

MuJoCo reads MUJOCO_GL once, at import. We default to EGL (GPU or Mesa llvmpipe) and fall back to OSMesa when
only that library is present; an explicit MUJOCO_GL from the user always wins.
"""

from __future__ import annotations

import ctypes.util
import os

SUPPORTED = ("egl", "osmesa", "glfw")
INSTALL_HINT = {"egl": "apt-get install libegl1 libgl1-mesa-dri", "osmesa": "apt-get install libosmesa6",
                "glfw": "a desktop session with a display (DISPLAY set)"}


def choose_gl_backend() -> str:
    """Sets MUJOCO_GL if unset (egl, else osmesa when only OSMesa is installed) and returns it."""
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") is not None:
        chosen = "osmesa"
    else:
        chosen = "egl"
    os.environ["MUJOCO_GL"] = chosen
    return chosen


def render_context_error(err: Exception) -> RuntimeError:
    """One clear error for 'no OpenGL context could be made', naming the variable and the package."""
    backend = os.environ.get("MUJOCO_GL", "egl")
    hints = "; ".join(f"MUJOCO_GL={b}: {INSTALL_HINT[b]}" for b in ("egl", "osmesa"))
    return RuntimeError(f"MUJOCO_GL={backend}: could not create a headless OpenGL context for rendering ({err}). "
                        f"Install the library for a backend and set MUJOCO_GL before starting: {hints}. "
                        f"Or run the sim with render=False (no camera images).")
