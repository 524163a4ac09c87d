"""Sensor drivers without ROS (pure Python over their SDKs); `nodes/` wraps them."""
