"""dsrl_ros: diffusion steering via RL (DSRL) on real arms, as a ROS 2 stack."""

__version__ = "0.1.0"
