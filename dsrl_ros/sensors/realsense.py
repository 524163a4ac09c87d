"""Intel RealSense frames through pyrealsense2, without ROS: a live camera, a recording played back, or synthetic
frames from a librealsense software device (`RealsenseSource`); and `record_synthetic`, which writes such a
recording (what the tests play back, and a way to try the camera node with no camera).

System needs: pyrealsense2 (pinned in pyproject.toml) loads libusb-1.0: the system's (`apt-get install
libusb-1.0-0`) when present, else the copy in the pinned `libusb-package` wheel, which `load_pyrealsense2` loads
first; if neither loads it says so in one line. librealsense 2.59 records rosbag2 files (.db3);
older SDKs wrote ROS 1 .bag files, which it still plays.

Each `Frame` keeps the device's capture time (ms, in the frame's timestamp domain: the camera's hardware clock on
a real device) beside the host time at which the frame was received (ns, the clock ROS stamps use).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

BACKENDS = ("device", "bag", "synthetic")


class RealsenseError(ValueError):
    """The camera cannot be used as configured (no device, wrong size, unreadable recording): one line."""


def _preload_wheel_libusb() -> bool:
    """Load the libusb-1.0 that the `libusb-package` wheel carries (soname libusb-1.0.so.0), so that the dynamic
    linker resolves pyrealsense2's dependency to it: a machine without the system library still runs the camera
    node and its tests. True if it loaded."""
    import ctypes
    import importlib.util
    spec = importlib.util.find_spec("libusb_package")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:          # the package's folder; the library lies in it
        try:
            ctypes.CDLL(os.path.join(folder, "libusb-1.0.so"), mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def load_pyrealsense2():
    """pyrealsense2, using the system's libusb-1.0 if there is one, else the pinned wheel's."""
    try:
        import pyrealsense2 as rs
    except ImportError as err:
        if "libusb" not in str(err) or not _preload_wheel_libusb():
            raise RealsenseError(f"pyrealsense2 cannot load ({err}); it needs libusb-1.0: the system's "
                                 f"(apt-get install libusb-1.0-0) or the libusb-package wheel") from None
        try:
            import pyrealsense2 as rs
        except ImportError as err2:
            raise RealsenseError(f"pyrealsense2 cannot load ({err2}) even with the libusb-package wheel's "
                                 f"libusb-1.0; install the system's: apt-get install libusb-1.0-0") from None
    return rs


@dataclass(frozen=True)
class Frame:
    color: np.ndarray                    # (H, W, 3) uint8 RGB
    depth: np.ndarray | None             # (H, W) uint16, depth_units m per unit, aligned to colour; None if off
    frame_number: int
    device_time_ms: float                # capture time on the device's clock
    timestamp_domain: str                # hardware_clock | system_time | global_time
    host_time_ns: int                    # when this host received it


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str                           # librealsense distortion model name
    coeffs: tuple[float, ...]


class RealsenseSource:
    """Colour (and optionally depth aligned to colour) at width x height and fps from one backend."""

    def __init__(self, backend: str, width: int, height: int, fps: int, depth: bool = False, serial: str = "",
                 bag_file: str = ""):
        if backend not in BACKENDS:
            raise RealsenseError(f"realsense.backend: expected one of {list(BACKENDS)}, got {backend!r}")
        self.rs = load_pyrealsense2()
        self.backend, self.width, self.height, self.fps, self.depth = backend, width, height, fps, depth
        self.serial, self.bag_file = serial, bag_file
        self.pipeline = self.align = self.synthetic = None
        self.depth_units = 0.001
        self._intrinsics: Intrinsics | None = None
        self.finished = False                   # a recording played to its end

    def start(self) -> None:
        rs = self.rs
        if self.backend == "synthetic":
            self.synthetic = _SyntheticCamera(rs, self.width, self.height, self.fps)
            return
        config = rs.config()
        if self.backend == "device":
            devices = rs.context().query_devices()
            if len(devices) == 0:
                raise RealsenseError("realsense.backend device: no RealSense camera is connected (pyrealsense2 found "
                                     "none: check the USB 3 cable and the udev rules, or use backend bag/synthetic)")
            serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
            if self.serial and self.serial not in serials:
                raise RealsenseError(f"realsense.serial: no camera {self.serial!r} connected (found {serials})")
            if self.serial:
                config.enable_device(self.serial)
            config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
            if self.depth:
                config.enable_stream(rs.stream.depth, 0, 0, rs.format.z16, self.fps)
        else:
            if not os.path.isfile(self.bag_file):
                raise RealsenseError(f"realsense.bag_file: no recording at {self.bag_file!r}")
            try:
                config.enable_device_from_file(self.bag_file, repeat_playback=False)
            except RuntimeError as err:
                raise RealsenseError(f"realsense.bag_file: cannot play {self.bag_file!r} ({err})") from None
        self.pipeline = rs.pipeline()
        try:
            profile = self.pipeline.start(config)
        except RuntimeError as err:
            raise RealsenseError(f"realsense.backend {self.backend}: the camera did not start ({err}); camera.width "
                                 f"x camera.height @ realsense.fps = {self.width}x{self.height} @ {self.fps} must be "
                                 f"a mode it has") from None
        if self.backend == "bag":
            # Played back in real time, as recorded (librealsense's frame-by-frame mode lost frames at the start in
            # 2.59, and so did asking the started pipeline for its stream profiles: the size is checked on the
            # first frame and the intrinsics taken from it).
            pass
        if self.depth:
            self.depth_units = profile.get_device().first_depth_sensor().get_depth_scale()
            self.align = rs.align(rs.stream.color)

    def intrinsics(self) -> Intrinsics | None:
        """The colour stream's intrinsics (known once the first frame is in)."""
        return self.synthetic.intrinsics if self.synthetic is not None else self._intrinsics

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next frame, or None if none came within timeout_s (a recording at its end sets `finished`)."""
        if self.synthetic is not None:
            return self.synthetic.read()
        ok, frames = self.pipeline.try_wait_for_frames(int(timeout_s * 1000))
        host_ns = time.time_ns()
        if not ok:
            if self.backend == "bag":
                self.finished = True
            return None
        if self.align is not None:
            frames = self.align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        depth = frames.get_depth_frame() if self.depth else None
        image = np.asanyarray(color.get_data())
        if image.shape != (self.height, self.width, 3):
            raise RealsenseError(f"camera.width: the {self.backend}'s colour frames are {image.shape[1]}x"
                                 f"{image.shape[0]}, the config says {self.width}x{self.height}")
        if self._intrinsics is None:
            self._intrinsics = _intrinsics_of(color.profile.as_video_stream_profile())
        return Frame(image.copy(), np.asanyarray(depth.get_data()).copy() if depth else None,
                     int(color.get_frame_number()), float(color.get_timestamp()),
                     str(color.get_frame_timestamp_domain()).split(".")[-1], host_ns)

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass
            self.pipeline = None
        if self.synthetic is not None:
            self.synthetic.close()
            self.synthetic = None


class _SyntheticCamera:
    """A librealsense software device producing a moving test pattern at fps, read back through a frame queue
    (the SDK's own frame path: same frame numbers, timestamps and domains as a device's)."""

    def __init__(self, rs, width: int, height: int, fps: int):
        self.rs, self.width, self.height, self.fps = rs, width, height, fps
        self.device, self.sensor, self.profile = _software_color_device(rs, width, height, fps)
        self.sensor.open(self.profile)
        self.queue = rs.frame_queue(4)
        self.sensor.start(self.queue)
        self.intrinsics = _intrinsics_of(self.profile)
        self.n = 0
        self.next_t = time.monotonic()
        self.start_ms = time.time() * 1000.0

    def read(self) -> Frame:
        delay = self.next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_t += 1.0 / self.fps
        _push(self.rs, self.sensor, self.profile, pattern_frame(self.width, self.height, self.n),
              self.n, self.start_ms + self.n * 1000.0 / self.fps)
        self.n += 1
        f = self.queue.wait_for_frame(1000)
        host_ns = time.time_ns()
        v = f.as_video_frame()
        return Frame(np.asanyarray(v.get_data()).copy(), None, int(v.get_frame_number()), float(v.get_timestamp()),
                     str(v.get_frame_timestamp_domain()).split(".")[-1], host_ns)

    def close(self) -> None:
        self.sensor.stop()
        self.sensor.close()


def pattern_frame(width: int, height: int, n: int) -> np.ndarray:
    """An RGB gradient that shifts by one pixel per frame (so consecutive frames differ)."""
    x = (np.arange(width)[None, :] + n) % 256
    y = np.arange(height)[:, None] % 256
    return np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                     np.full((height, width), (n * 7) % 256)], axis=-1).astype(np.uint8)


def _software_color_device(rs, width: int, height: int, fps: int):
    device = rs.software_device()
    device.register_info(rs.camera_info.name, "dsrl_ros synthetic RealSense")
    device.register_info(rs.camera_info.serial_number, "synthetic")
    sensor = device.add_sensor("RGB Camera")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.ppx, intr.ppy = width, height, width / 2.0, height / 2.0
    intr.fx = intr.fy = 0.9 * width                   # ~58 deg horizontal field of view, like a D435's colour camera
    intr.model, intr.coeffs = rs.distortion.brown_conrady, [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 1
    stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = width, height, fps, 3, rs.format.rgb8
    stream.intrinsics = intr
    profile = sensor.add_video_stream(stream).as_video_stream_profile()
    return device, sensor, profile


def _intrinsics_of(profile) -> Intrinsics:
    i = profile.get_intrinsics()
    return Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, str(i.model).split(".")[-1],
                      tuple(float(c) for c in i.coeffs))


def _push(rs, sensor, profile, image: np.ndarray, number: int, device_ms: float) -> None:
    frame = rs.software_video_frame()
    frame.pixels = np.ascontiguousarray(image)
    frame.stride, frame.bpp = image.shape[1] * 3, 3
    frame.timestamp, frame.domain = device_ms, rs.timestamp_domain.hardware_clock
    frame.frame_number, frame.profile = number, profile
    sensor.on_video_frame(frame)


def record_synthetic(path: str, width: int, height: int, fps: int, frames: int) -> list[np.ndarray]:
    """Writes `frames` test-pattern colour frames from a software device into a RealSense recording (.db3 with
    librealsense 2.59) through `rs.recorder`, one every 1/fps s (the recording keeps the host time each frame was
    written at, and playback follows it); returns the images written."""
    rs = load_pyrealsense2()
    device, sensor, profile = _software_color_device(rs, width, height, fps)
    recorder = rs.recorder(str(path), device)
    recorded = recorder.query_sensors()[0]
    recorded.open(recorded.get_stream_profiles()[0])
    queue = rs.frame_queue(frames + 1)
    recorded.start(queue)
    images = []
    next_t = time.monotonic()
    for n in range(frames):
        time.sleep(max(0.0, next_t - time.monotonic()))
        next_t += 1.0 / fps
        image = pattern_frame(width, height, n)
        _push(rs, sensor, profile, image, n, 1000.0 + n * 1000.0 / fps)
        queue.wait_for_frame(1000)
        images.append(image)
    recorded.stop()
    recorded.close()
    del recorder                                          # closes and flushes the file
    return images
