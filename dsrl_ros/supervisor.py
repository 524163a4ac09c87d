"""Process supervisor for the node graph: one OS process per node, restarted with back-off when it crashes.

What `ros2 launch` does on a robot PC, for machines without a ROS install: start every node of the graph
(`stack.build_graph`) as its own process in its own session, log each to `<logs>/<node>.log`, restart a node
that dies (1 s, 2 s, 4 s ... up to 30 s between tries; the delay resets after a minute of healthy running),
never restart one that exited with a fatal code (a bad config or corrupt file at start, a full disk:
`ros_env.FATAL_EXIT_CODES`; restarting cannot fix it), stop restarting one that fails the same way at start
`CRASH_LOOP_STARTS` times in a row (its own error line, else its last log line, is the error the run stops
with), and stop them all cleanly: SIGINT (rclpy's clean shutdown), then SIGTERM, then SIGKILL for a node that
does not exit.
Children die with the supervisor even if it is killed with SIGKILL (`ros_env.die_with_supervisor`).
The state of every node is kept in `<logs>/supervisor.json` (pid, state, restarts) for people and tests.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dsrl_ros.ros_env import CONFIG_ERROR_EXIT, FATAL_EXIT_CODES, SUPERVISOR_PID_ENV, node_error_prefix
from dsrl_ros.stack import NodeSpec

BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 1.0, 30.0, 60.0
STARTUP_S = 30.0                 # an exit this soon after a start is a failure to start
CRASH_LOOP_STARTS = 3            # that many failures to start in a row, ending in the same error line: give up


@dataclass
class Child:
    spec: NodeSpec
    process: subprocess.Popen | None = None
    state: str = "stopped"            # starting | running | crashed | failed | stopped
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = BACKOFF_FIRST_S   # the delay before the next restart
    last_backoff_s: float = 0.0         # the delay the last (or pending) restart waited
    exit_codes: list[int] = field(default_factory=list)
    start_failures: list[str] = field(default_factory=list)   # last log line of each failed start, in a row


class Supervisor:
    def __init__(self, specs: list[NodeSpec], env: dict[str, str], log_dir: str | Path,
                 say: Callable[[str], None] = print):
        self.children = [Child(spec) for spec in specs]
        self.env, self.say = {**env, SUPERVISOR_PID_ENV: str(os.getpid())}, say
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.fatal: str | None = None     # set when a node cannot run at all ...
        self.fatal_code = 0               # ... with the exit code `dsrl-ros up` should end with
        self._state_unwritable = False

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
        self._write_state()

    def _spawn(self, child: Child) -> None:
        log = open(self.log_dir / f"{child.spec.name}.log", "ab")
        log.write(f"\n--- start {time.strftime('%Y-%m-%d %H:%M:%S')} (restart {child.restarts}) ---\n".encode())
        log.flush()
        child.process = subprocess.Popen(child.spec.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_default_stop_signals)
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
                last = self._last_error(child, code)
                if code in FATAL_EXIT_CODES:
                    self._give_up(child, last, code)
                    continue
                child.start_failures = (child.start_failures + [last] if now - child.started_at < STARTUP_S
                                        else [])
                if (len(child.start_failures) >= CRASH_LOOP_STARTS
                        and len(set(child.start_failures[-CRASH_LOOP_STARTS:])) == 1):
                    self._give_up(child, f"{last} (failed the same way at each of {CRASH_LOOP_STARTS} starts)",
                                  CONFIG_ERROR_EXIT)
                    continue
                if now - child.started_at >= HEALTHY_AFTER_S:
                    child.backoff_s = BACKOFF_FIRST_S
                child.state, child.restart_at = "crashed", now + child.backoff_s
                child.last_backoff_s = child.backoff_s
                self.say(f"[supervisor] {child.spec.name} exited with code {code} ({last}); restarting in "
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

    def _give_up(self, child: Child, error: str, code: int) -> None:
        child.state = "failed"
        verb = "cannot start" if code == CONFIG_ERROR_EXIT else "stopped the run"
        self.fatal, self.fatal_code = f"{child.spec.name} {verb}: {error}", code
        self.say(f"[supervisor] {self.fatal}")

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
        for child in self.children:        # the state says what happened: a node still alive stays "running"
            if child.state == "running" and child.process.poll() is not None:
                child.state = "stopped"
                child.exit_codes.append(child.process.returncode)
            elif child.state == "crashed":
                child.state = "stopped"
        self._write_state()

    def status_line(self) -> str:
        return "  ".join(f"{c.spec.name}:{c.state}" + (f"(r{c.restarts})" if c.restarts else "")
                         for c in self.children)

    def _write_state(self) -> None:
        state = {c.spec.name: {"pid": c.process.pid if c.process else None, "state": c.state,
                               "restarts": c.restarts, "exit_codes": c.exit_codes,
                               "last_backoff_s": c.last_backoff_s} for c in self.children}
        tmp = self.log_dir / ".supervisor.json.tmp"
        try:
            tmp.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(tmp, self.log_dir / "supervisor.json")
        except OSError as err:             # a full disk must not stop the supervisor from stopping the nodes
            if err.errno != errno.ENOSPC:
                raise
            if not self._state_unwritable:
                self.say(f"[supervisor] cannot write {self.log_dir / 'supervisor.json'}: {err}")
            self._state_unwritable = True

    def _last_error(self, child: Child, code: int) -> str:
        """What this run of the node said last as its error: its own one-line error (`<name>: error: ...`, from
        run_node) where it wrote one, even if shutdown logging followed it; otherwise its last log line (a
        traceback's last line); a node killed by a signal before it said anything: the signal's name."""
        try:
            text = (self.log_dir / f"{child.spec.name}.log").read_text(errors="replace")
        except OSError:
            text = ""
        lines = [line for line in text.split("--- start")[-1].splitlines()[1:] if line.strip()]
        if code < 0:
            died = f"killed by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"exit code {code}"
            return f"{died}" + (f" after: {lines[-1].strip()}" if lines else " before it logged anything")
        own_errors = [line for line in lines if line.startswith(node_error_prefix(child.spec.name))]
        if own_errors:
            return own_errors[-1].strip()
        return lines[-1].strip() if lines else f"exit code {code}"


def _default_stop_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM at their defaults. An ignored signal stays ignored across
    exec, and a shell ignores SIGINT in what it starts in the background (`dsrl-ros up ... &` from a script, a
    test run started with `&`): a child that inherited that would sit out the clean stop and be SIGTERMed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)   # the node and anything it started
    except ProcessLookupError:
        pass

