"""The RealSense camera without a camera: frames from a librealsense software device recorded with rs.recorder
into a temporary recording, played back through sensors/realsense.py and through the realsense_camera node
(count, size, encoding, rising stamps, camera_info, device capture times); one clear error with no device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import die_with_test
from stack_harness import ROOT, wait_for

try:
    from dsrl_ros.sensors.realsense import RealsenseError, RealsenseSource, load_pyrealsense2, record_synthetic

    load_pyrealsense2()
except Exception as err:                 # only if no libusb-1.0 loads (system's or wheel's)
    pytest.skip(f"pyrealsense2 cannot load here: {err}", allow_module_level=True)

W, H, FPS, N = 64, 48, 30, 20


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("realsense") / "synthetic.db3"
    images = record_synthetic(str(path), W, H, FPS, N)
    return path, images


def read_all(source: RealsenseSource, limit_s: float = 10.0) -> list:
    frames, deadline = [], time.monotonic() + limit_s
    while not source.finished and time.monotonic() < deadline:
        frame = source.read(timeout_s=0.5)
        if frame is not None:
            frames.append(frame)
    return frames


def test_a_recording_plays_back_every_frame_with_its_capture_time(recording):
    path, images = recording
    source = RealsenseSource("bag", W, H, FPS, bag_file=str(path))
    source.start()
    try:
        frames = read_all(source)
    finally:
        source.stop()
    assert [f.frame_number for f in frames] == list(range(N))
    for f in frames:
        np.testing.assert_array_equal(f.color, images[f.frame_number])
        assert f.color.dtype == np.uint8 and f.color.shape == (H, W, 3)
    device = np.diff([f.device_time_ms for f in frames])
    np.testing.assert_allclose(device, 1000.0 / FPS, atol=1e-3)           # the device clock, as recorded
    assert all(f.timestamp_domain == "hardware_clock" for f in frames)
    assert all(np.diff([f.host_time_ns for f in frames]) > 0)
    intr = source.intrinsics()
    assert (intr.width, intr.height, intr.ppx, intr.ppy) == (W, H, W / 2, H / 2)


def test_no_device_or_a_wrong_size_is_one_clear_error(recording):
    with pytest.raises(RealsenseError, match="realsense.backend device: no RealSense camera is connected"):
        RealsenseSource("device", 640, 480, 30).start()
    source = RealsenseSource("bag", 640, 480, FPS, bag_file=str(recording[0]))
    source.start()
    try:
        with pytest.raises(RealsenseError, match=r"camera.width: the bag's colour frames are 64x48, the config "
                                                 r"says 640x480"):
            for _ in range(20):
                source.read(0.5)
    finally:
        source.stop()
    with pytest.raises(RealsenseError, match="realsense.bag_file"):
        RealsenseSource("bag", W, H, FPS, bag_file=str(recording[0].with_name("none.db3"))).start()


def test_synthetic_frames_come_at_the_configured_size_and_rate():
    source = RealsenseSource("synthetic", W, H, FPS)
    source.start()
    try:
        frames = [source.read() for _ in range(10)]
    finally:
        source.stop()
    assert [f.frame_number for f in frames] == list(range(10)) and frames[0].color.shape == (H, W, 3)
    assert not np.array_equal(frames[0].color, frames[1].color)
    period_ms = np.median(np.diff([f.host_time_ns for f in frames])) / 1e6
    assert 1000 / FPS * 0.7 < period_ms < 1000 / FPS * 1.5


def config_file(tmp_path, **realsense) -> str:
    data = yaml.safe_load((ROOT / "robot_configs" / "sim_arm_hw.yaml").read_text())
    data["camera"].update({"width": W, "height": H})
    data["realsense"] = {"enabled": True, "fps": FPS} | realsense
    data["learner"]["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "camera.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def start_node(tmp_path, config: str) -> tuple[subprocess.Popen, object]:
    log = open(tmp_path / "realsense_camera.log", "w")
    proc = subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.nodes.realsense_camera",
                                                   "--ros-args", "-p", f"robot_config:={config}"]),
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    return proc, log


@pytest.mark.stack
def test_the_node_publishes_a_recording_on_realsense_ros_topics(tmp_path, recording):
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    from dsrl_ros.nodes.ros_io import image_to_array, qos, stamp_ns

    path, images = recording
    proc, log = start_node(tmp_path, config_file(tmp_path, backend="bag", bag_file=str(path)))
    if not rclpy.ok():
        rclpy.init()
    node = rclpy.create_node("realsense_probe")
    got, infos, meta = [], [], []
    node.create_subscription(Image, "/camera/camera/color/image_raw", got.append, qos()["status"])
    node.create_subscription(CameraInfo, "/camera/camera/color/camera_info", infos.append, qos()["status"])
    node.create_subscription(String, "/camera/camera/color/metadata", lambda m: meta.append(json.loads(m.data)),
                             qos()["status"])
    try:
        wait_for(lambda: len(got) >= N or proc.poll() is not None, 60, "the recording's frames",
                 lambda: rclpy.spin_once(node, timeout_sec=0.05))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:                                     # nothing more comes
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    assert len(got) == N, (tmp_path / "realsense_camera.log").read_text()
    assert all((m.width, m.height, m.encoding, m.step) == (W, H, "rgb8", W * 3) for m in got)
    for m, image in zip(got, images):                                     # in order, pixel for pixel
        np.testing.assert_array_equal(image_to_array(m, W, H), image)
    stamps = [stamp_ns(m.header.stamp) for m in got]
    assert all(np.diff(stamps) > 0) and all(m.header.frame_id == "camera_color_optical_frame" for m in got)
    assert len(infos) == N and [stamp_ns(i.header.stamp) for i in infos] == stamps
    assert list(infos[0].k) == pytest.approx([0.9 * W, 0, W / 2, 0, 0.9 * W, H / 2, 0, 0, 1], rel=1e-6)
    assert [m["header_stamp_ns"] for m in meta] == stamps and [m["frame_number"] for m in meta] == list(range(N))
    np.testing.assert_allclose(np.diff([m["device_time_ms"] for m in meta]), 1000 / FPS, atol=1e-3)
    assert "played to its end (20 frames)" in (tmp_path / "realsense_camera.log").read_text()


@pytest.mark.stack
def test_the_node_without_a_camera_exits_with_one_clear_error(tmp_path):
    proc, log = start_node(tmp_path, config_file(tmp_path, backend="device"))
    assert proc.wait(timeout=60) == 2
    log.close()
    text = (tmp_path / "realsense_camera.log").read_text()
    assert "realsense_camera: error: realsense.backend device: no RealSense camera is connected" in text
    assert "Traceback" not in text
