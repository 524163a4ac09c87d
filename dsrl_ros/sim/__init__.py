"""Embedded MuJoCo arm (tasks `lift_block`, `lift`, `place`) and its scripted expert. Importing this package
chooses the headless GL backend (MUJOCO_GL) before mujoco loads."""

from dsrl_ros.sim.arm import ACTION_LAYOUT, PROPRIO_LAYOUT, TASKS, ArmEnv
from dsrl_ros.sim.scripted import ScriptedExpert


def make_env(task: str = "lift", image_size: int = 84, **kwargs) -> ArmEnv:
    return ArmEnv(task=task, image_size=image_size, **kwargs)


__all__ = ["ACTION_LAYOUT", "PROPRIO_LAYOUT", "TASKS", "ArmEnv", "ScriptedExpert", "make_env"]
