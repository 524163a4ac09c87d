"""rosbag2 without ROS: writing MCAP bags, reading MCAP / sqlite3 bags, "as of" alignment, and conversion of
recorded sessions or foreign bags into chunk-level replay episodes. No rclpy import anywhere in this package."""
