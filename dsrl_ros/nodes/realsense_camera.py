"""realsense_camera: an Intel RealSense camera on realsense-ros topic names, a thin shell over
`dsrl_ros/sensors/realsense.py` (pyrealsense2; the system needs libusb-1.0).

Publishes on camera.topic (e.g. /camera/camera/color/image_raw) sensor_msgs/Image rgb8 at camera.width x
camera.height, realsense.fps; beside it .../camera_info (sensor_msgs/CameraInfo from the stream's intrinsics) and
.../metadata (std_msgs/String, JSON: frame_number, the device's capture time in ms and its clock domain, the
header stamp it belongs to); with realsense.depth, depth aligned to colour on
<camera>/aligned_depth_to_color/image_raw (16UC1, realsense depth units) with its camera_info. header.stamp is
the host time the frame was received (the clock every other node stamps with); the device capture time is kept
in the metadata.

Backends (realsense.backend): `device` (realsense.serial, or the first camera), `bag` (a RealSense recording,
played once in real time, starting when the first image subscriber appears), `synthetic` (a librealsense software
device with a moving test pattern). No camera attached, a mode it lacks or a recording of another size: one line
naming the field, exit code 2 (not restarted).
"""

from __future__ import annotations

import json
import threading
import time

from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from dsrl_ros.nodes.base import ConfiguredNode
from dsrl_ros.nodes.ros_io import array_to_image, ns_stamp, qos, run_node
from dsrl_ros.sensors.realsense import RealsenseError, RealsenseSource

COLOR_FRAME = "camera_color_optical_frame"
DISTORTION_MODELS = {"brown_conrady": "plumb_bob", "none": "plumb_bob", "inverse_brown_conrady": "plumb_bob",
                     "modified_brown_conrady": "plumb_bob", "kannala_brandt4": "equidistant"}


def camera_info(intr, stamp, frame_id: str) -> CameraInfo:
    info = CameraInfo(width=intr.width, height=intr.height,
                      distortion_model=DISTORTION_MODELS.get(intr.model, "plumb_bob"), d=list(intr.coeffs),
                      k=[intr.fx, 0.0, intr.ppx, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[intr.fx, 0.0, intr.ppx, 0.0, 0.0, intr.fy, intr.ppy, 0.0, 0.0, 0.0, 1.0, 0.0])
    info.header.stamp, info.header.frame_id = stamp, frame_id
    return info


class RealsenseCameraNode(ConfiguredNode):
    def __init__(self):
        super().__init__("realsense_camera")
        c, r = self.config, self.config.realsense
        if r.depth and r.backend == "synthetic":
            raise ValueError("realsense.depth: the synthetic backend makes colour only")
        self.source = RealsenseSource(r.backend, c.camera.width, c.camera.height, r.fps, r.depth, r.serial, r.bag_file)
        q = qos()
        base = c.camera.topic.rsplit("/", 2)[0]                      # /camera/camera/color/image_raw -> /camera/camera
        self.image_pub = self.create_publisher(Image, c.camera.topic, q["status"])
        self.info_pub = self.create_publisher(CameraInfo, c.camera.info_topic, q["status"])
        self.meta_pub = self.create_publisher(String, c.camera.topic.rsplit("/", 1)[0] + "/metadata", q["status"])
        self.depth_pub = self.depth_info_pub = None
        if r.depth:
            self.depth_pub = self.create_publisher(Image, f"{base}/aligned_depth_to_color/image_raw", q["status"])
            self.depth_info_pub = self.create_publisher(CameraInfo, f"{base}/aligned_depth_to_color/camera_info",
                                                        q["status"])
        if r.backend != "bag":
            self.source.start()                                       # no camera / no such mode: RealsenseError
        self.frames = 0
        self.thread_error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.thread.start()
        self.create_timer(0.5, self._check_thread)
        self.get_logger().info(f"RealSense {r.backend}: {c.camera.width}x{c.camera.height} rgb8 @ {r.fps} Hz on "
                               f"{c.camera.topic}{' + aligned depth' if r.depth else ''}")

    def _check_thread(self) -> None:
        if self.thread_error is not None:
            raise RuntimeError(f"capture thread died: {self.thread_error!r}")

    def _run(self) -> None:
        try:
            if self.config.realsense.backend == "bag":   # a recording plays once: wait for someone to watch it
                while not self.stopping.is_set() and self.image_pub.get_subscription_count() == 0:
                    time.sleep(0.05)
                time.sleep(0.5)                          # discovery: let the subscriber's side match us too
                self.source.start()
            while not self.stopping.is_set():
                frame = self.source.read(timeout_s=1.0)
                if frame is not None:
                    self._publish(frame)
                elif self.source.finished:
                    self.get_logger().info(f"recording {self.config.realsense.bag_file} played to its end "
                                           f"({self.frames} frames)")
                    return
        except RealsenseError as err:
            self.get_logger().error(str(err))
            self.thread_error = err
        except BaseException as err:
            self.thread_error = err

    def _publish(self, frame) -> None:
        stamp = ns_stamp(frame.host_time_ns)
        intr = self.source.intrinsics()
        self.image_pub.publish(array_to_image(frame.color, stamp, COLOR_FRAME))
        self.info_pub.publish(camera_info(intr, stamp, COLOR_FRAME))
        self.meta_pub.publish(String(data=json.dumps({
            "header_stamp_ns": frame.host_time_ns, "frame_number": frame.frame_number,
            "device_time_ms": frame.device_time_ms, "timestamp_domain": frame.timestamp_domain})))
        if self.depth_pub is not None and frame.depth is not None:
            depth = Image(height=frame.depth.shape[0], width=frame.depth.shape[1], encoding="16UC1", is_bigendian=0,
                          step=frame.depth.shape[1] * 2, data=frame.depth.astype("<u2").tobytes())
            depth.header.stamp, depth.header.frame_id = stamp, COLOR_FRAME     # aligned to colour
            self.depth_pub.publish(depth)
            self.depth_info_pub.publish(camera_info(intr, stamp, COLOR_FRAME))
        self.frames += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2.0)
        self.source.stop()


def main(argv: list[str] | None = None) -> int:
    return run_node(RealsenseCameraNode, "realsense_camera", argv)


if __name__ == "__main__":
    raise SystemExit(main())
