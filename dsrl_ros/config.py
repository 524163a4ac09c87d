"""Robot configs: `robot_configs/<robot>.yaml` validated into typed, frozen dataclasses.

One file describes one robot set-up for the whole stack: the arm (joints, limits), its camera and proprio
topics, the control loop, the action space and its safety limits, and the settings of each node. Every node
process loads the same file, so the graph's parameters are defined once.

Errors name the field by its dotted path and say what was expected; unknown keys are errors, not ignored.
`load_config(path, overrides=["learner.utd=10"])` applies `section.key=value` overrides (YAML values) before
validation, so a bad override gets the same one-line error as a bad file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

# The sections and their checks live in their own modules; every name is importable from here.
from dsrl_ros.config_checks import check_policy_fits_config, check_values, uses_executor
from dsrl_ros.config_sections import (ACTION_SPACES, BAG_COMPRESSIONS, BAG_STAMPS, DEFAULT_COMMAND_TOPICS, DEVICES,
                                      EXECUTOR_BACKENDS, GRIPPER_MODES, REALSENSE_BACKENDS, ROBOT_KINDS,
                                      SIM_INTERFACES, SIM_TASKS, TELEOP_DEVICES, ActionSection, BagsSection,
                                      CameraSection, ConfigError, ControlSection, EpisodeSection, ExecutorSection,
                                      JointsSection, LearnerSection, PolicySection, ProprioSection,
                                      RealsenseSection, RecordingSection, RobotSection, RosSection, SafetySection,
                                      StackConfig, SteeringSection, TeleopSection, WorkspaceSection, join_path,
                                      show_value)

__all__ = ["ACTION_SPACES", "BAG_COMPRESSIONS", "BAG_STAMPS", "DEFAULT_COMMAND_TOPICS", "DEVICES",
           "EXECUTOR_BACKENDS", "GRIPPER_MODES", "REALSENSE_BACKENDS", "ROBOT_KINDS", "SIM_INTERFACES", "SIM_TASKS",
           "TELEOP_DEVICES", "ActionSection", "BagsSection", "CameraSection", "ConfigError", "ControlSection",
           "EpisodeSection", "ExecutorSection", "JointsSection", "LearnerSection", "PolicySection", "ProprioSection",
           "RealsenseSection", "RecordingSection", "RobotSection", "RosSection", "SafetySection", "StackConfig",
           "SteeringSection", "TeleopSection", "WorkspaceSection", "apply_overrides", "check_policy_fits_config",
           "config_from_dict", "load_config", "uses_executor"]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> StackConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no robot config there (see robot_configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """`section.key=value` strings (value parsed as YAML) onto a copy of the config mapping."""
    if not overrides or not isinstance(data, dict):
        return data   # a non-mapping file gets its own error from config_from_dict
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. learner.utd=10")
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a mapping, got {show_value(section)}")
        try:
            section[parts[1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") \
                from None
    return out


def config_from_dict(data: Any) -> StackConfig:
    config = _build(StackConfig, data, "")
    check_values(config)
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{join_path(where, key)}: unknown key; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = join_path(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing (required)")
            continue
        kwargs[name] = _coerce(hints[name], data[name], path)
    try:
        return cls(**kwargs)
    except ValueError as err:          # a section's own checks (e.g. AgentConfig's) name the field first
        raise ConfigError(join_path(where, str(err))) from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of {item.__name__}, got {show_value(value)}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{path}: union types are not supported in configs")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {show_value(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {show_value(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {show_value(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {show_value(value)}")
        return value
    raise TypeError(f"{path}: unsupported config type {hint!r}")

