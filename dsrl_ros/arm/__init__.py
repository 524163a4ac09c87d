"""From action chunks to an arm's controller: timing (`schedule`), the safety layer (`safety`), kinematics from
the URDF (`kinematics`), controller commands (`backends`) and the executor that ties them (`executor`). Pure
Python, no rclpy: `nodes/chunk_executor.py` is the ROS shell."""
