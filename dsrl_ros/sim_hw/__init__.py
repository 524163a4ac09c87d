"""The embedded sim arm behind ros2_control-style interfaces (hardware mode): its URDF, the joint-servo plant and
the controllers a real arm's driver would run. Pure Python over MuJoCo, no rclpy: `nodes/sim_hardware.py` is the
ROS shell."""
