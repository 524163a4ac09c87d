"""The stack under faults, corruption and hostile traffic (real processes, real DDS on localhost).

Each test starts its own graph (`dsrl-ros up`) and checks, after the fact, that every stored episode is one whole
robot episode: re-simulated from its reset seed with its stored chunks it reproduces every stored observation
bit for bit (tests/stack_harness.py). A merged, halved or forged episode cannot pass that check.
"""

from __future__ import annotations

import array
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stack_harness import (FAST, SIM, Up, alive, assert_stored_episodes_are_whole, stored_episodes,
                           supervisor_state, wait_for)

pytestmark = pytest.mark.stack


def _steered(probe, timeout_s=240):
    from dsrl_interfaces.msg import ActionChunk

    probe.wait(lambda: any(c.noise_source == ActionChunk.SOURCE_ACTOR for c in probe.chunks), timeout_s,
               "chunks steered by a learned actor")


def _mid_episode(probe, results_in: int = 1):
    """Waits until an episode is running and has `results_in` chunk results; returns its number."""
    def running_with_results():
        running = probe.running()
        if not running or (probe.ended() and probe.ended()[-1].episode == running[-1].episode):
            return None
        episode = running[-1].episode
        return episode if sum(r.episode == episode for r in probe.results) >= results_in else None
    return probe.wait(running_with_results, 120, "an episode in progress")


def _actor_payload(config_overrides: list[str], **steer_changes):
    """A real actor for this robot config (as the learner would make it), as (safetensors bytes, config JSON)."""
    import dataclasses

    from dsrl_ros.config import load_config
    from dsrl_ros.core.checkpoint import DEFAULT_BASE_POLICY, load_policy
    from dsrl_ros.core.agent_config import AgentConfig
    from dsrl_ros.core.steering import PolicySteering

    overrides = [v for k, v in zip(config_overrides, config_overrides[1:]) if k == "--set"]
    steer = AgentConfig.of(load_config(SIM, overrides).learner)
    return PolicySteering(load_policy(DEFAULT_BASE_POLICY), dataclasses.replace(steer, **steer_changes))


# ---- hostile traffic ------------------------------------------------------------------------------------------
def test_hostile_traffic_never_reaches_the_arm_and_never_becomes_data(tmp_path, probe):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from dsrl_interfaces.msg import ActionChunk, ActorWeights, EpisodeEvent, Noise, Observation
    from dsrl_ros.core.run_identity import load_or_create_run_key
    from dsrl_ros.nodes.ros_io import (ACTION_CHUNK, ACTOR_WEIGHTS, EPISODE, NOISE, OBSERVATION, qos,
                                       sign, stamp_ns)

    # A narrower limit than the sim's own +-1 on dx, as a real arm's config would set: both the policy node and
    # the robot side must hold chunks to it.
    up = Up(tmp_path / "run", "--set", "action.high=[0.5, 1, 1, 1, 1]")
    try:
        _steered(probe)
        key = load_or_create_run_key(tmp_path / "run")
        probe.key = key                       # the probe counts this run's episode events only (step 4 forges some)

        # 1. Noise with the current seq but huge values races the steering node. Another run's never reaches the
        #    policy node (DDS's run filter, ros_io.run_filter); one with this run's public run_id but no valid
        #    signature is dropped unread; this run's own (a fault in its steering node) is refused: base noise.
        answered = []
        noise_pub = probe.node.create_publisher(Noise, NOISE, qos()["decision"])

        def answer(obs):
            if not obs.final:
                for sender in ("another run", "copied run_id", "this run"):
                    noise = Noise(seq=obs.seq, episode=obs.episode, actor_version=99, source=0,
                                  noise=array.array("f", [1e30] * 40))
                    if sender == "this run":
                        sign(noise, key)
                    elif sender == "copied run_id":
                        noise.run_id, noise.signature = key.run_id, array.array("B", bytes(32))
                    noise_pub.publish(noise)
                answered.append(obs.seq)
        obs_sub = probe.node.create_subscription(Observation, OBSERVATION, answer, qos()["decision"])
        probe.wait(lambda: "refused noise" in (log := up.log("policy")) and "noise.signature: does not match" in log
                   and len(answered) >= 5, 60, "refused noise")
        probe.node.destroy_subscription(obs_sub)
        assert "noise.run_id" not in up.log("policy")                  # another run's: never even read

        # 2. Actor weights: unsigned, signed but NaN / 1e30 / another architecture: none adopted.
        good = _actor_payload(FAST)
        payload, config_json = good.actor_payload()
        tensors = st_load(payload)
        name = next(iter(tensors))
        forged = []
        for label, t, cfg, signed in (("unsigned", tensors, config_json, False),
                                    ("nan", {**tensors, name: tensors[name] * float("nan")}, config_json, True),
                                    ("huge", {**tensors, name: tensors[name] * 0 + 1e30}, config_json, True)):
            msg = ActorWeights(version=10**6 + len(forged), num_updates=1, config_json=cfg,
                               safetensors=array.array("B", st_save(t)))
            if signed:
                sign(msg, key)
            forged.append((label, msg))
        old = ActorWeights(version=1, num_updates=1, config_json=config_json, safetensors=array.array("B", payload))
        sign(old, key)                            # a real, signed actor, but not newer than the one
        forged.append(("old version", old))                     # in use: a replay
        wrong_key = ActorWeights(version=10**6 + 8, num_updates=1, config_json=config_json,
                                 safetensors=array.array("B", payload), run_id=key.run_id,
                                 signature=array.array("B", bytes(32)))
        forged.append(("wrong key", wrong_key))
        other = _actor_payload(FAST, hidden_dim=64).actor_payload()
        msg = ActorWeights(version=10**6 + 9, num_updates=1, config_json=other[1],
                           safetensors=array.array("B", other[0]))
        sign(msg, key)
        forged.append(("architecture", msg))
        for label, msg in forged:
            probe.publish(ActorWeights, ACTOR_WEIGHTS, [msg], "latched", seconds=1.0)
        refusals = ["actor_weights.signature: does not match this run's key",
                    "expected finite values, got NaN or inf", "expected |values| <= 10000",
                    "agent.hidden_dim: expected 32", "actor_weights.version: expected > "]
        log = probe.wait(lambda: all(r in (text := up.log("steering")) for r in refusals) and text, 60,
                         f"the steering node to refuse every forged actor: {refusals}")
        assert " version 100000" not in log.replace("stays version", "")   # no forged version ever in use
        assert "actor_weights.run_id" not in log                          # the unsigned one: never even read
        # ... and the learner's next real version is still adopted afterwards.
        adopted_before = log.count(" in use (")
        probe.wait(lambda: up.log("steering").count(" in use (") > adopted_before, 120,
                   "the learner's next version to be adopted")

        # 3. Chunks. One from another stack (unsigned, naming the running episode, well within the limits) never
        #    reaches a node; one with this run's run_id but no valid signature is dropped unread by the sim and the
        #    learner: neither runs, neither is stored. Signed with this run's key (a fault in our own policy node): one for
        #    another episode is refused; one naming the running episode is held to the robot config's action
        #    limits by the sim itself (and its result, filed under that episode, keeps the episode out of the
        #    replay: the check at the end); a NaN chunk is dropped.
        # The running episode can end while they are on the way (then each is refused as another episode's): the
        # four go again for the next episode until the sim has answered each as below. Episodes last ~1 s here,
        # so the refusal of a stray chunk may name a later running episode than the one it was made for, and the
        # sim logs only the first refusal per running episode (DropLog): any try's stray chunk refused counts.
        forged_dropped = "action_chunk.signature: does not match this run's key"
        expected = ["clipped to action limits: dx 1e+06 > 0.5", "actions: expected finite values, got NaN or inf",
                    forged_dropped]
        stray_episodes: set[int] = set()        # one per try: the episode number the stray chunk names

        def answered() -> bool:
            log = up.log("sim_robot")
            refused = {int(e) for e in re.findall(r"expected the running episode \(\d+\), got (\d+) \(chunk 3\)", log)}
            return bool(refused & stray_episodes) and all(e in log for e in expected)

        def chunk(seq: int, episode: int, actions: list[float], signed: bool = True, copied_run_id: bool = False):
            msg = ActionChunk(seq=seq, episode=episode, chunk_len=8, action_dim=5, execute_steps=8,
                              noise=array.array("f", [0.0] * 40), actions=array.array("f", actions))
            if signed:
                sign(msg, key)
            elif copied_run_id:
                msg.run_id, msg.signature = key.run_id, array.array("B", bytes(32))
            return msg
        for _ in range(6):
            episode = _mid_episode(probe)
            foreign = chunk(4, episode, [0.2, 0, 0, 0, 0] * 8, signed=False)
            forged = chunk(0, episode, [0.2, 0, 0, 0, 0] * 8, signed=False, copied_run_id=True)
            stray = chunk(3, episode + 1000, [0.2, 0, 0, 0, 0] * 8)
            big = chunk(1, episode, [1e6, 0, 0, 0, 0] * 8)
            nan = chunk(2, episode, [float("nan")] * 40)
            stray_episodes.add(episode + 1000)
            probe.publish(ActionChunk, ACTION_CHUNK, [foreign, forged, stray, big, nan], "decision", seconds=10,
                          until=answered)
            if answered():
                break
        assert answered(), up.log("sim_robot")[-5000:]
        # The learner discovers a new publisher on its own (~0.35 s): the sim may have answered before the
        # learner matched the probe's publisher, so the two go on until the learner has dropped the forged one too.
        probe.publish(ActionChunk, ACTION_CHUNK, [foreign, forged], "decision", seconds=30,
                      until=lambda: forged_dropped in up.log("learner"))
        assert forged_dropped in up.log("learner"), up.log("learner")[-3000:]            # dropped unread: not stored
        assert not any(r.seq in (0, 3, 4) for r in probe.results)      # the stray, forged, foreign chunks never ran
        assert not re.search(r"chunk [04]\b", up.log("sim_robot"))     # the forged and foreign were never parsed
        for node in ("sim_robot", "learner"):                          # another run's never reached a node
            assert "action_chunk.run_id" not in up.log(node)

        # 4. Forged episode events (an ENDED success for the running episode, then a flood of random ones, half
        #    another run's, half with this run's public run_id but no valid signature): ignored by every reader,
        #    and the stack goes on making episodes.
        episode = _mid_episode(probe)
        fake_end = EpisodeEvent(episode=episode, state=EpisodeEvent.STATE_ENDED, outcome=EpisodeEvent.OUTCOME_SUCCESS,
                                chunks=1, steps=8, run_id=key.run_id, signature=array.array("B", bytes(32)))
        probe.publish(EpisodeEvent, EPISODE, [fake_end], "events", seconds=1.0)
        rng = np.random.default_rng(0)
        ended_before = len(probe.ended())
        flood = [EpisodeEvent(episode=int(rng.integers(0, 10**6)), state=int(rng.integers(0, 3)),
                              outcome=int(rng.integers(0, 5)), run_id=key.run_id if i % 2 else "",
                              signature=array.array("B", rng.bytes(32) if i % 2 else b"")) for i in range(200)]
        assert probe.flood(EpisodeEvent, EPISODE, flood, "events", seconds=10, rate_hz=2000) > 15_000   # ~20 k in 10 s
        probe.wait(lambda: len(probe.ended()) >= ended_before + 2, 120, "episodes going on after the flood")
        # The nodes drain the flood's backlog after it ends; step 5 starts once the policy node has acted in an
        # episode that began after the flood (its event readers have caught up), so that it measures the noise
        # flood, not the tail of this one (before the start was repeated, a RUNNING event lost under that tail
        # stalled an episode for the whole stall timeout there).
        first_after = max(e.episode for e in probe.running()) + 1             # ours (signed), not forged
        probe.wait(lambda: any(c.episode >= first_after for c in probe.chunks), 120,
                   "the policy acting in an episode after the event flood")
        for node in ("policy", "learner"):              # read and dropped; another run's never even read
            assert "episode_event.signature" in up.log(node) and "episode_event.run_id" not in up.log(node)

        # 5. A flood of noise for decisions nobody asked about (~1000 messages/s, a hundred times the graph's own
        #    rate; the flooding process itself shares the test machine's cores): control goes on.
        #    Counted by the executor's stamps on its results, after the probe has read every result up to the
        #    flood's end: the probe's own busy publishing loop must not read as a stalled graph.
        junk = [Noise(seq=int(s), episode=1, noise=array.array("f", [0.0] * 40), run_id=key.run_id,   # past the
                      signature=array.array("B", rng.bytes(32))) for s in rng.integers(1, 10**9, 100)]  # run filter
        flood_start_ns = time.time_ns()
        probe.flood(Noise, NOISE, junk, "decision", seconds=10, rate_hz=1000)
        flood_end_ns = time.time_ns()
        probe.wait(lambda: any(stamp_ns(r.header.stamp) > flood_end_ns for r in probe.results), 60,
                   "a chunk result after the noise flood")
        during = [r for r in probe.results if flood_start_ns <= stamp_ns(r.header.stamp) <= flood_end_ns]
        assert len(during) > 5, f"only {len(during)} chunk results in the 10 s of a noise flood"

        # A start lost in a reader's flooded queue is sent again (the episode manager repeats it until the first
        # result): no episode after the event flood sat until the stall timeout.
        stalled = [(e.episode, e.detail) for e in probe.ended() if e.episode >= first_after and "stalled" in e.detail]
        assert not stalled, stalled

        # Nothing unsafe was ever published, and every node is still the one that started.
        for c in probe.chunks:
            actions = np.frombuffer(c.actions, np.float32)
            if c.seq > 4:                                        # ours (seq 1-4) are the hostile ones
                actions = actions.reshape(-1, 5)
                assert np.isfinite(actions).all() and np.abs(actions).max() <= 1.0
                assert actions[:, 0].max() <= 0.5                       # the config's limit, not the sim's
        assert all(s["restarts"] == 0 for s in up.state().values()), up.state()
    finally:
        up.stop()
    assert up.proc.returncode == 0, up.output()
    assert assert_stored_episodes_are_whole(tmp_path / "run") >= 2


# ---- crashes --------------------------------------------------------------------------------------------------
def test_kill_9_of_any_node_costs_at_most_the_episode_it_interrupted(tmp_path, probe):
    from dsrl_interfaces.msg import EpisodeEvent

    up = Up(tmp_path / "run", "--set", "episode.stall_timeout_s=8")
    try:
        probe.wait(lambda: probe.ended(), 180, "a first finished episode")

        # The episode manager: its interrupted episode is aborted, numbering continues.
        episode = _mid_episode(probe)
        old = up.pid("episode_manager")
        os.kill(old, signal.SIGKILL)
        aborted = probe.wait(lambda: [e for e in probe.ended() if e.episode == episode and
                                      e.outcome == EpisodeEvent.OUTCOME_ABORTED], 120,
                             "the interrupted episode to be aborted by the restarted manager")
        assert "interrupted" in aborted[0].detail
        probe.wait(lambda: probe.running()[-1].episode > episode, 60, "the next episode")
        assert probe.running()[-1].episode == episode + 1 and up.pid("episode_manager") != old

        # The sim: nothing executes, the stalled episode is aborted after episode.stall_timeout_s.
        episode = _mid_episode(probe)
        os.kill(up.pid("sim_robot"), signal.SIGKILL)
        stalled = probe.wait(lambda: [e for e in probe.ended() if e.episode == episode], 120,
                             "the stalled episode to end")
        assert stalled[0].outcome == EpisodeEvent.OUTCOME_ABORTED and "stalled" in stalled[0].detail
        assert "no result for chunk within" in up.log("policy")    # the policy's watchdog decided again meanwhile
        probe.wait(lambda: [e for e in probe.ended() if e.episode > episode], 120,
                   "an episode after the sim's restart")

        # Learner and policy together: the learner sees only the episode's second half and must not store it.
        episode = _mid_episode(probe, results_in=2)
        for node in ("learner", "policy"):
            os.kill(up.pid(node), signal.SIGKILL)
        probe.wait(lambda: [e for e in probe.ended() if e.episode > episode + 1], 240,
                   "two more episodes after the learner's and policy's restart")
        # Whether the restarted learner saw the episode's second half depends on how fast it came back (it may
        # have missed the whole episode); when it saw any of it, it refused it for the right reason.
        refusals = [line for line in up.log("learner").splitlines() if f"episode {episode} not stored:" in line]
        assert all("its start was not seen" in line or "aborted" in line for line in refusals), refusals
    finally:
        up.stop()
    records = stored_episodes(tmp_path / "run")
    robot_episodes = [r["robot_episode"] for r in records]
    assert robot_episodes == sorted(set(robot_episodes))                  # unique, in order
    assert episode not in robot_episodes
    assert assert_stored_episodes_are_whole(tmp_path / "run") >= 2
    state = supervisor_state(tmp_path / "run")
    assert state["episode_manager"]["restarts"] == 1 and -9 in state["sim_robot"]["exit_codes"]


# ---- the supervisor ---------------------------------------------------------------------------------------------
def test_children_die_with_the_supervisor_and_a_run_dir_has_one_supervisor(tmp_path, probe):
    up = Up(tmp_path / "run")
    try:
        wait_for(lambda: len(up.state()) == 5 and all(s["state"] == "running" for s in up.state().values()), 120,
                 "all five nodes")
        pids = [s["pid"] for s in up.state().values()]
        second = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "up", SIM, "--run-dir", str(tmp_path / "run")],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"dsrl-ros up: error: {tmp_path / 'run'}: in use by another dsrl-ros up (pid {up.proc.pid}); stop it first")
        os.kill(up.proc.pid, signal.SIGKILL)                       # no chance to stop anything itself
        wait_for(lambda: not any(alive(p) for p in pids), 60, "every node to die with its supervisor")
    finally:
        up.stop()

    hup = Up(tmp_path / "run2")                                    # the terminal closing: a clean stop
    wait_for(lambda: len(hup.state()) == 5 and all(s["state"] == "running" for s in hup.state().values()), 120,
             "all five nodes of the second graph")
    drained = time.monotonic() + 2.0
    while time.monotonic() < drained:                               # what the first graph sent is all in
        probe.spin()
    seen = len(probe.running())
    probe.wait(lambda: len(probe.running()) > seen, 120, "an episode of the second graph (every node up)")
    pids = [s["pid"] for s in hup.state().values()]
    hup.proc.send_signal(signal.SIGHUP)
    assert hup.wait(90) == 0, hup.output()
    assert "SIGHUP received" in hup.output()
    assert not any(alive(p) for p in pids)
    assert {s["state"] for s in supervisor_state(tmp_path / "run2").values()} == {"stopped"}
    exits = {name: s["exit_codes"] for name, s in supervisor_state(tmp_path / "run2").items()}
    assert all(codes[-1] == 0 for codes in exits.values()), (exits, hup.output()[-3000:])


def test_dds_security_on_the_pip_wheels_fails_closed_with_one_line(tmp_path):
    (tmp_path / "keystore").mkdir()
    up = Up(tmp_path / "run", "--set", "ros.security=true", "--set", f"ros.security_keystore={tmp_path / 'keystore'}")
    assert up.wait(180) == 2
    errors = [line for line in up.output().splitlines() if line.startswith("dsrl-ros up: error:")]
    assert len(errors) == 1 and "cannot start: " in errors[0] and "ros.security: DDS security could not start" \
        in errors[0] and "apt ROS 2 install with SROS2" in errors[0], up.output()


# ---- damaged files ----------------------------------------------------------------------------------------------
def test_a_damaged_replay_stops_the_run_with_one_line_and_repair_makes_it_usable(tmp_path):
    first = Up(tmp_path / "run", "--episodes", "3")
    assert first.wait(300) == 0, first.output()
    data = tmp_path / "run" / "replay.zarr" / "data" / "image" / "c"
    chunk = sorted(p for p in data.rglob("*") if p.is_file())[-1]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])      # a torn write

    broken = Up(tmp_path / "run", "--episodes", "1")
    assert broken.wait(300) == 2
    errors = [line for line in broken.output().splitlines() if line.startswith("dsrl-ros up: error:")]
    assert len(errors) == 1 and "learner cannot start" in errors[0] and "dsrl-ros repair" in errors[0], \
        broken.output()
    assert supervisor_state(tmp_path / "run")["learner"]["restarts"] == 0  # diagnosed, not looped

    repair = subprocess.run([sys.executable, "-m", "dsrl_ros.cli", "repair", str(tmp_path / "run"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert repair.returncode == 0, repair.stderr
    report = json.loads(repair.stdout.strip().splitlines()[-1])
    assert report["episodes_kept"] < 3 and Path(report["replay_backup"]).is_dir()
    again = Up(tmp_path / "run", "--episodes", "1")
    assert again.wait(300) == 0, again.output()


# ---- disk full ------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs of the test's own (needs root, as on CI)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_ends_the_run_with_one_line_and_loses_nothing_committed(small_disk, tmp_path):
    from dsrl_ros.core.episode_store import EpisodeStore

    up = Up(small_disk / "run", "--set", "learner.checkpoint_every_s=0.5", out_dir=tmp_path)
    assert up.wait(600) == 3, up.output()
    errors = [line for line in up.output().splitlines() if line.startswith("dsrl-ros up: error:")]
    assert len(errors) == 1 and "disk full" in errors[0], up.output()
    assert "Traceback" not in up.output()
    store = EpisodeStore.open(small_disk / "run" / "replay.zarr")
    store.verify()
    data, ends = store.load_all()                               # every committed episode decodes
    assert len(ends) >= 1 and int(ends[-1]) == store.n_steps
    # The learner logs an episode after committing it: the log may lack the one the disk filled up after.
    assert len(store) - len(stored_episodes(small_disk / "run")) in (0, 1)
