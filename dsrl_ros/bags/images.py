"""Camera messages from a bag -> the policy's image: sensor_msgs/Image (raw) and sensor_msgs/CompressedImage.

A frame of the wrong encoding or size is an error naming the topic (`BagDataError`), not a silent resize: a
bag from another camera set-up would otherwise train on images the policy never sees on the robot. Frames of
the configured size are resized to the policy's input exactly as the policy node does (INTER_AREA).
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)


class BagDataError(ValueError):
    """Data in a bag that cannot be converted; the message starts with the topic."""


def decode_image(msg, msgtype: str, topic: str, width: int, height: int, encoding: str = "rgb8") -> np.ndarray:
    """A deserialized camera message (rosbags) -> (height, width, 3) uint8 RGB."""
    if msgtype == IMAGE_TYPE:
        return raw_image(msg, topic, width, height, encoding)
    if msgtype == COMPRESSED_TYPE:
        return compressed_image(msg, topic, width, height)
    raise BagDataError(f"{topic}: expected {' or '.join(IMAGE_TYPES)}, got {msgtype}")


def raw_image(msg, topic: str, width: int, height: int, encoding: str) -> np.ndarray:
    if msg.encoding != encoding:
        raise BagDataError(f"{topic}: image encoding {msg.encoding!r}, expected {encoding!r} (camera.encoding)")
    if (msg.width, msg.height) != (width, height):
        raise BagDataError(f"{topic}: image {msg.width}x{msg.height}, expected {width}x{height} "
                           f"(camera.width x camera.height)")
    row = width * 3
    data = np.asarray(msg.data, np.uint8)
    if msg.step < row or data.size != msg.step * height:
        raise BagDataError(f"{topic}: image data of {data.size} bytes with step {msg.step}, expected {height} "
                           f"rows of step >= {row}")
    return data.reshape(height, msg.step)[:, :row].reshape(height, width, 3)


def compressed_image(msg, topic: str, width: int, height: int) -> np.ndarray:
    """JPEG / PNG (image_transport's `compressed`, realsense-ros) decoded to RGB; the format string names the
    channel order of the encoded pixels ("rgb8; jpeg compressed bgr8": the codec's own order, BGR)."""
    fmt = str(msg.format).lower()
    if fmt and not any(codec in fmt for codec in ("jpeg", "jpg", "png")):
        raise BagDataError(f"{topic}: compressed format {msg.format!r}, expected jpeg or png")
    decoded = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)   # BGR, 3 channels
    if decoded is None:
        raise BagDataError(f"{topic}: compressed image ({msg.format!r}, {len(msg.data)} bytes) does not decode")
    if decoded.shape[:2] != (height, width):
        raise BagDataError(f"{topic}: image {decoded.shape[1]}x{decoded.shape[0]}, expected {width}x{height} "
                           f"(camera.width x camera.height)")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def to_policy_input(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Resized as the policy node resizes camera frames."""
    if image.shape[:2] != tuple(input_hw):
        image = cv2.resize(image, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)
