"""Base policies DSRL can steer, behind one interface (base.py); `load_base_policy` picks the adapter."""

from dsrl_ros.policies.base import BasePolicy, InputSpec, PolicySpec
from dsrl_ros.policies.loader import load_base_policy

__all__ = ["BasePolicy", "InputSpec", "PolicySpec", "load_base_policy"]
