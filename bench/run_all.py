"""Runs every benchmark (what `make bench` does); each writes bench/results/<name>.json and prints a table.

bench/RESULTS.md quotes these results with the machine they ran on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_policy.py", "bench_sim.py", "bench_store.py", "bench_dds.py", "bench_bag2zarr.py"]

if __name__ == "__main__":
    for name in BENCHES:
        print(f"## {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / name)], check=True)
