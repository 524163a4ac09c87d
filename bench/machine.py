"""Names the machine a benchmark ran on, for every results file."""

from __future__ import annotations

import os
import platform


def machine_description() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpus_available": len(os.sched_getaffinity(0))}
    try:
        import torch

        info["torch"] = torch.__version__
        # Float rounding depends on the kernels torch dispatches to (AVX2, AVX512) and on its thread count, and a
        # contact-rich rollout amplifies it into other episodes (docs/results.md: 22 % vs 27 % at 1 vs 2 threads).
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
