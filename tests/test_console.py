"""`dsrl-ros console` in a real terminal (tmux): keys drive the episode manager's start / label / abort /
re-record through signed commands, and the screen shows the episode as the manager publishes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

import die_with_test
from stack_harness import ROOT, wait_for
from test_episode_manager import fr3_config

pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")]


class Terminal:
    """A tmux server of the test's own (its own socket) running one command in a 110x24 window."""

    def __init__(self, command: str):
        self.socket = f"dsrl_console_test_{os.getpid()}"
        self.tmux("new-session", "-d", "-s", "console", "-x", "110", "-y", "24", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "console")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "console", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def test_console_keys_start_label_abort_and_rerecord_episodes(tmp_path):
    config = fr3_config(tmp_path)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    manager = subprocess.Popen(die_with_test.command([sys.executable, "-m", "dsrl_ros.nodes.episode_manager",
                                                      "--ros-args", "-p", f"robot_config:={config}"]),
                               stdout=open(tmp_path / "manager.log", "w"), stderr=subprocess.STDOUT, env=env)
    exported = " ".join(f"{k}={env[k]}" for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE") if k in env)
    term = Terminal(f"cd {ROOT} && env {exported} {sys.executable} -m dsrl_ros.cli console {config} "
                    f"2> {tmp_path / 'console.err'}; sleep 30")
    try:
        def shows(text: str, what: str, timeout_s: float = 60):
            wait_for(lambda: text in term.screen(), timeout_s, f"{what} on the screen:\n{term.screen()}")

        shows("episode 0  RESETTING", "the manager's first RESETTING")
        assert "Enter start" in term.screen() and "policy drives" in term.screen()
        time.sleep(1.5)                                        # discovery: the manager matches our publisher
        term.keys("Enter")
        shows("episode 1  RUNNING", "the started episode")
        term.keys("y")
        shows("last outcomes: S ", "the success label")
        shows("episode 1  RESETTING", "the next reset")
        term.keys("Enter")
        shows("episode 2  RUNNING", "the second episode")
        term.keys("z")
        shows("re-record episode 2", "the re-record's reset")
        assert "last outcomes: S A" in term.screen()          # discarded: ended aborted
        term.keys("Enter")
        shows("re-record of episode 2", "the re-recorded episode running")
        term.keys("x")
        shows("last outcomes: S A A", "the abort")
        term.keys(" ")
        shows("DRIVING (intervention on)", "the takeover")
        term.keys(" ")
        shows("policy drives", "the hand-back")
        term.keys("Escape")
        wait_for(lambda: "dsrl-ros console" not in term.screen(), 20, "the console to quit")
        log = (tmp_path / "manager.log").read_text()
        assert "operator start from console-" in log and "operator success from console-" in log
        assert "operator rerecord from console-" in log and "operator abort from console-" in log
    finally:
        term.close()
        manager.terminate()
        manager.wait(timeout=30)
