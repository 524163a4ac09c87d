"""Process supervisor for the node graph: one OS process per node, restarted with back-off when it crashes.

What `ros2 launch` does on a robot PC, for machines without a ROS install: start every node of the graph
(`stack.build_graph`) as its own process in its own session, log each to `<logs>/<node>.log`, restart a node
that dies (1 s, 2 s, 4 s ... up to 30 s between tries; the delay resets after a minute of healthy running),
never restart one that exited on a bad config (exit code 2: restarting cannot fix it), and stop them all
cleanly: SIGINT (rclpy's clean shutdown), then SIGTERM, then SIGKILL for a node that does not exit.
The state of every node is kept in `<logs>/supervisor.json` (pid, state, restarts) for people and tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dsrl_ros.nodes.ros_io import CONFIG_ERROR_EXIT
from dsrl_ros.stack import NodeSpec

BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 1.0, 30.0, 60.0


@dataclass
class Child:
    spec: NodeSpec
    process: subprocess.Popen | None = None
    state: str = "stopped"            # starting | running | crashed | failed | stopped
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = BACKOFF_FIRST_S
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, specs: list[NodeSpec], env: dict[str, str], log_dir: str | Path,
                 say: Callable[[str], None] = print):
        self.children = [Child(spec) for spec in specs]
        self.env, self.say = env, say
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.fatal: str | None = None     # set when a node cannot run at all

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        self._write_state()

    def _spawn(self, child: Child) -> None:
        log = open(self.log_dir / f"{child.spec.name}.log", "ab")
        log.write(f"\n--- start {time.strftime('%Y-%m-%d %H:%M:%S')} (restart {child.restarts}) ---\n".encode())
        log.flush()
        child.process = subprocess.Popen(child.spec.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()   # the child holds its own descriptor
        child.state, child.started_at, child.restart_at = "running", time.monotonic(), None

    def poll(self) -> None:
        """Notices exits and restarts nodes whose back-off has run out. Call it often (every ~0.1 s)."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.state == "running" and child.process.poll() is not None:
                code = child.process.returncode
                child.exit_codes.append(code)
                changed = True
                if code == CONFIG_ERROR_EXIT:
                    child.state = "failed"
                    self.fatal = f"{child.spec.name} cannot start: {self._last_error(child)}"
                    self.say(f"[supervisor] {self.fatal}")
                    continue
                if now - child.started_at >= HEALTHY_AFTER_S:
                    child.backoff_s = BACKOFF_FIRST_S
                child.state, child.restart_at = "crashed", now + child.backoff_s
                self.say(f"[supervisor] {child.spec.name} exited with code {code}; restarting in "
                         f"{child.backoff_s:.0f} s (log: {self.log_dir / (child.spec.name + '.log')})")
                child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)
            elif child.state == "crashed" and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
                changed = True
                self.say(f"[supervisor] {child.spec.name} restarted (pid {child.process.pid}, "
                         f"restart {child.restarts})")
        if changed:
            self._write_state()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGINT to every node, then SIGTERM, then SIGKILL for what is still alive."""
        alive = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for child in alive:
                _signal_group(child.process, sig)
            deadline = time.monotonic() + wait_s
            while alive and time.monotonic() < deadline:
                alive = [c for c in alive if c.process.poll() is None]
                time.sleep(0.05)
            if not alive:
                break
            if sig != signal.SIGKILL:
                self.say(f"[supervisor] still running after {signal.Signals(sig).name}: "
                         f"{[c.spec.name for c in alive]}")
        for child in self.children:
            if child.state in ("running", "crashed"):
                child.state = "stopped"
        self._write_state()

    def status_line(self) -> str:
        return "  ".join(f"{c.spec.name}:{c.state}" + (f"(r{c.restarts})" if c.restarts else "")
                         for c in self.children)

    def _write_state(self) -> None:
        state = {c.spec.name: {"pid": c.process.pid if c.process else None, "state": c.state,
                               "restarts": c.restarts, "exit_codes": c.exit_codes} for c in self.children}
        tmp = self.log_dir / ".supervisor.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.log_dir / "supervisor.json")

    def _last_error(self, child: Child) -> str:
        lines = (self.log_dir / f"{child.spec.name}.log").read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {CONFIG_ERROR_EXIT}"


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)   # the node and anything it started
    except ProcessLookupError:
        pass
