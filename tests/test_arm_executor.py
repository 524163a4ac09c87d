"""arm/executor.py: chunk -> safe commands -> chunk reports, on the sim arm's kinematics (ee_delta actions)."""

import numpy as np
import pytest

from dsrl_ros.arm.backends import PositionCommand, TrajectoryCommand, make_backend
from dsrl_ros.arm.executor import ChunkExecutor, ChunkRefused
from dsrl_ros.arm.executor_settings import ExecutorSettings
from dsrl_ros.arm.kinematics import ArmKinematics
from dsrl_ros.arm.safety import SafetyLimits
from dsrl_ros.sim_hw.urdf import sim_arm_urdf

MS = 1_000_000
P = 50 * MS
JOINTS = tuple(f"joint{i}" for i in range(1, 8))

def _sim_home() -> np.ndarray:
    """The sim arm's home joints (tool at (0.42, 0, 0.22) pointing down)."""
    from dsrl_ros.sim import make_env

    env = make_env("lift", render=False)
    obs, _ = env.reset(seed=0)
    env.close()
    return obs["proprio"][:7].astype(float)


HOME = _sim_home()
NAMES = ("dx", "dy", "dz", "dyaw", "grip")
SCALE = np.array([0.025, 0.025, 0.025, 0.15, 1.0])


@pytest.fixture(scope="module")
def kin():
    return ArmKinematics(sim_arm_urdf([2.0] * 7), list(JOINTS), "grip")


LOWER = np.array([-2.9, -1.8, -2.9, -2.6, -2.9, -2.6, -3.0])
UPPER = np.array([2.9, 1.8, 2.9, 2.6, 2.9, 2.6, 3.0])


def make(kin, backend="forward_position", space="ee_delta", names=NAMES, scale=SCALE, lower=LOWER, upper=UPPER,
         **limits):
    lim = SafetyLimits(JOINTS, lower, upper, np.full(7, 2.0), joint_margin=0.02,
                       **({"workspace_low": np.array([0.22, -0.32, 0.012]),
                           "workspace_high": np.array([0.72, 0.32, 0.40]), "max_ee_step_m": 0.03,
                           "max_ee_step_rad": 0.2} | limits))
    settings = ExecutorSettings(space, names, -np.ones(len(names)), np.ones(len(names)), scale, P, 20 * MS, 64, lim,
                                joint_state_timeout_ns=100 * MS, chunk_timeout_ns=2000 * MS,
                                grip_action=(-1.0, 1.0), grip_width=(0.08, 0.0))
    ex = ChunkExecutor(settings, make_backend(backend, list(JOINTS), P, "joint" if backend != "cartesian_pose"
                                              else "topic", "gripper"), kin)
    ex.on_joint_state(HOME, 0.08, 0)
    return ex


def send(ex, seq, episode, actions, stamp_ns, now_ns=None):
    """A chunk arriving at now_ns (default: the stamp), with joint states fresh at that moment."""
    now_ns = stamp_ns if now_ns is None else now_ns
    ex.on_joint_state(HOME, 0.08, now_ns)
    return ex.on_chunk(seq, episode, actions, stamp_ns, now_ns)


def run(ex, until_ns, start_ns, step_ns=5 * MS, q=None):
    """Ticks the executor, feeding joint states (the commanded ones unless q is given); returns outputs."""
    outs = []
    for t in range(start_ns, until_ns, step_ns):
        ex.on_joint_state(HOME if q is None else q, 0.08, t)
        outs.append(ex.tick(t))
    return outs


def reports(outs):
    return [r for o in outs for r in o.reports]


def test_executed_actions_are_the_chunks_own_and_chain_from_the_commanded_pose(kin):
    ex = make(kin)
    rng = np.random.default_rng(0)
    a1, a2 = rng.uniform(-0.5, 0.5, (8, 5)).astype(np.float32), rng.uniform(-0.5, 0.5, (8, 5)).astype(np.float32)
    out = send(ex, 1, 1, a1, 1000 * MS, 1005 * MS)
    (r1,) = reports(run(ex, 1500 * MS, 1005 * MS))
    assert r1.ended_by == "complete" and r1.indices == list(range(8)) and r1.dropped_late == 0
    np.testing.assert_array_equal(r1.actions, a1)                         # bit for bit
    assert r1.stamps_ns == [1050 * MS + k * P for k in range(8)]
    # The arm never moved (joint states stay at HOME), yet the second chunk builds on the first one's last
    # target, not on the measured pose: no drift, no jump.
    first_pose = kin.fk(HOME)
    send(ex, 2, 1, a2, 1500 * MS, 1505 * MS)
    last = ex.schedule.active.steps[-1].target
    expected = first_pose.xyz + (a1[:, :3].astype(float) * SCALE[:3]).sum(0) + (a2[:, :3] * SCALE[:3]).sum(0)
    np.testing.assert_allclose(last.pose.xyz, expected, atol=1e-9)
    np.testing.assert_allclose(kin.fk(last.q).xyz, expected, atol=1e-4)
    assert [type(c) for c in out.commands] == []                         # streaming starts at the first tick


def test_out_of_workspace_and_over_speed_steps_are_limited_and_reported_once(kin):
    ex = make(kin)
    down = np.zeros((8, 5), np.float32)
    down[:, 2] = -1.0                                                     # 2.5 cm down per step, 20 cm total
    ex = make(kin, workspace_low=np.array([0.22, -0.32, 0.1]), workspace_high=np.array([0.72, 0.32, 0.40]))
    out = send(ex, 1, 1, down * 3.0, 1000 * MS, 1000 * MS)   # 3x over action.high too
    assert any("action.low[dz]" in line for line in out.logs)
    targets = [st.target for st in ex.schedule.active.steps]
    z = [t.pose.xyz[2] for t in targets]
    assert min(z) >= 0.1 - 1e-9                                           # workspace.low[z]
    assert z[-1] == pytest.approx(0.1)
    assert any("workspace.low[z]" in line for line in out.logs)
    for a, b in zip(targets, targets[1:]):                               # joint speed within 2 rad/s per step
        assert np.abs(b.q - a.q).max() <= 2.0 * 0.05 + 1e-9
    (r,) = reports(run(ex, 1600 * MS, 1000 * MS))
    assert r.limited_steps == 8
    assert r.actions[0, 2] == pytest.approx(-1.0, abs=1e-6)               # clipped to action.low, then executed
    assert r.actions[-1, 2] > -1.0                                        # the floor stopped it
    np.testing.assert_allclose(r.actions[:, 2].sum() * 0.025, z[-1] - kin.fk(HOME).xyz[2], atol=1e-6)
    out = send(ex, 2, 1, down, 1600 * MS, 1600 * MS)
    assert not any("workspace.low[z]" in line for line in out.logs)       # once per episode
    send(ex, 3, 2, down, 1700 * MS, 1700 * MS)
    out = send(ex, 4, 2, down * 0, 1700 * MS, 1700 * MS)
    assert out.logs == [] or all("workspace" not in line for line in out.logs)


def test_joint_delta_over_speed_is_clamped_per_step(kin):
    names = tuple(f"d{j}" for j in JOINTS) + ("grip",)
    ex = make(kin, space="joint_delta", names=names, scale=np.array([1.0] * 7 + [1.0]), workspace_low=None,
              workspace_high=None)
    actions = np.zeros((4, 8), np.float32)
    actions[:, 0] = 1.0                                                   # 1 rad per 50 ms step = 20 rad/s
    out = send(ex, 1, 1, actions, 1000 * MS, 1000 * MS)
    assert any("joints.velocity_limit[joint1]: 20 limited to 2" in line for line in out.logs)
    q = [st.target.q[0] for st in ex.schedule.active.steps]
    np.testing.assert_allclose(np.diff([HOME[0], *q]), 0.1)               # 2 rad/s * 50 ms


def test_nan_chunks_are_refused_whole(kin):
    ex = make(kin)
    bad = np.zeros((8, 5), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        send(ex, 1, 1, bad, 1000 * MS, 1000 * MS)
    assert ex.schedule.active is None


def test_estop_halts_at_once_latches_and_resets_only_explicitly(kin):
    ex = make(kin, backend="joint_trajectory")
    a = np.full((8, 5), 0.3, np.float32)
    (traj,) = send(ex, 1, 1, a, 1000 * MS, 1000 * MS).commands
    assert isinstance(traj, TrajectoryCommand) and len(traj.times_ns) == 8
    run(ex, 1130 * MS, 1000 * MS)
    out = ex.estop("test", 1131 * MS)
    (hold,) = out.commands
    assert isinstance(hold, TrajectoryCommand) and hold.stamp_ns == 1131 * MS
    np.testing.assert_allclose(hold.positions[0, :7], HOME) and np.testing.assert_allclose(hold.velocities, 0)
    (r,) = out.reports
    assert r.ended_by == "estop" and r.indices == [0, 1]                  # due 1050 and 1100 ran; 1150.. never
    with pytest.raises(ChunkRefused, match="e-stop"):
        send(ex, 2, 1, a, 1200 * MS, 1200 * MS)
    assert ex.estop("again", 1300 * MS).commands == []                    # already latched
    assert reports(run(ex, 1600 * MS, 1300 * MS)) == []
    ex.reset_estop(1600 * MS)
    assert send(ex, 3, 1, a, 1600 * MS, 1600 * MS).commands


def test_watchdog_holds_on_stale_joint_states_and_when_chunks_stop(kin):
    ex = make(kin)
    ex.on_episode(1, True, 1000 * MS)
    send(ex, 1, 1, np.full((8, 5), 0.2, np.float32), 1000 * MS, 1000 * MS)
    run(ex, 1100 * MS, 1000 * MS)
    out = ex.tick(1250 * MS)                                              # no joint state since 1095 ms
    assert out.reports[0].ended_by == "watchdog" and out.reports[0].indices == [0, 1, 2, 3, 4]
    assert isinstance(out.commands[0], PositionCommand)
    assert any("joint states" in line for line in out.logs)
    with pytest.raises(ChunkRefused, match="joint states"):
        ex.on_chunk(2, 1, np.zeros((8, 5), np.float32), 1250 * MS, 1250 * MS)
    ex.on_joint_state(HOME, 0.08, 1260 * MS)
    send(ex, 3, 1, np.zeros((8, 5), np.float32), 1260 * MS, 1260 * MS)     # fresh again: accepted
    outs = run(ex, 3800 * MS, 1265 * MS)
    late = [line for o in outs for line in o.logs if "no chunk" in line]
    assert len(late) == 1                                                 # 2 s without a chunk: hold, said once
    ex.on_episode(1, False, 3800 * MS)
    assert not any("no chunk" in line for o in run(ex, 7000 * MS, 3800 * MS) for line in o.logs)


def test_a_repeated_start_does_not_postpone_the_chunk_watchdog(kin):
    """The episode manager sends a start again until the first result: a copy is not a new start, so the 2 s
    without a chunk still count from the last chunk, not from the copy."""
    ex = make(kin)
    ex.on_episode(1, True, 1000 * MS)
    send(ex, 1, 1, np.zeros((8, 5), np.float32), 1000 * MS, 1000 * MS)
    outs = run(ex, 2500 * MS, 1005 * MS)
    ex.on_episode(1, True, 2500 * MS)                                   # a copy of episode 1's start
    outs += run(ex, 3300 * MS, 2500 * MS)
    assert [line for o in outs for line in o.logs if "no chunk" in line]   # held at ~3 s, as without the copy


def test_a_new_chunk_replaces_the_running_one(kin):
    ex = make(kin)
    send(ex, 1, 1, np.full((8, 5), 0.1, np.float32), 1000 * MS, 1000 * MS)
    run(ex, 1120 * MS, 1000 * MS)
    out = send(ex, 2, 1, np.full((8, 5), -0.1, np.float32), 1120 * MS, 1120 * MS)
    (old,) = out.reports
    assert old.seq == 1 and old.ended_by == "replaced" and old.indices == [0, 1]     # due 1050, 1100
    new = ex.schedule.active
    assert new.seq == 2 and new.steps[0].due_ns == 1150 * MS
    # The new chunk starts from the replaced chunk's last executed target: its first target is one step on.
    np.testing.assert_allclose(new.steps[0].target.pose.xyz - ex.kin.fk(HOME).xyz,
                               (0.1 * 2 - 0.1) * SCALE[:3], atol=1e-9)


def test_success_ends_the_chunk_and_the_episode_step_limit_truncates(kin):
    ex = make(kin)
    send(ex, 1, 1, np.zeros((8, 5), np.float32), 1000 * MS, 1000 * MS)
    run(ex, 1120 * MS, 1000 * MS)
    (r,) = ex.on_success(1121 * MS).reports
    assert r.success and r.ended_by == "success" and r.indices == [0, 1]          # due 1050, 1100
    ex2 = make(kin)
    for k in range(8):                                                    # 8 chunks of 8 = the 64-step limit
        send(ex2, k, 1, np.zeros((8, 5), np.float32), (1000 + 500 * k) * MS, (1000 + 500 * k) * MS)
        rs = reports(run(ex2, (1500 + 500 * k) * MS, (1000 + 500 * k) * MS))
        assert rs[0].truncated == (k == 7)
    (r,) = send(ex2, 9, 1, np.zeros((8, 5), np.float32), 6000 * MS, 6000 * MS).reports
    assert r.indices == [] and r.truncated


def test_with_episode_events_only_the_running_episodes_chunks_run(kin):
    ex = make(kin)
    ex.on_episode(3, True, 900 * MS)
    with pytest.raises(ChunkRefused, match="running episode is 3"):
        send(ex, 1, 99, np.zeros((8, 5), np.float32), 1000 * MS)          # a stray or hostile episode number
    send(ex, 2, 3, np.zeros((8, 5), np.float32), 1000 * MS)
    (r,) = ex.on_episode(3, False, 1120 * MS).reports                     # the operator ended it mid-chunk
    assert r.ended_by == "episode_ended" and r.indices == [0, 1]
    with pytest.raises(ChunkRefused, match="over"):
        send(ex, 3, 3, np.zeros((8, 5), np.float32), 1200 * MS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_hostile_sequence_gets_a_target_past_any_limit(kin, seed):
    """Random out-of-range chunks, pushed into corners: every target the executor commands is in the box, within
    the joint limits (narrowed here, so the clamp is what holds them), and within the per-step limits."""
    lower = np.array([-2.9, -1.8, -2.9, 1.3, -2.9, -2.6, -3.0])               # joint4 >= 1.3: home is 1.59
    upper = np.array([2.9, 0.8, 2.9, 2.6, 2.9, 1.3, 3.0])                  # joint2 <= 0.8, joint6 <= 1.3
    ex = make(kin, lower=lower, upper=upper)
    lim = ex.s.limits
    rng = np.random.default_rng(seed)
    t = 1000 * MS
    prev = None
    for k in range(30):
        direction = rng.uniform(-1, 1, 5)
        actions = np.tile(direction * rng.uniform(1, 50), (8, 1)).astype(np.float32)   # far out of range
        send(ex, k, 1, actions, t)
        for step in ex.schedule.active.steps if ex.schedule.active else []:
            target = step.target
            assert np.all(target.pose.xyz >= lim.workspace_low - 1e-3)
            assert np.all(target.pose.xyz <= lim.workspace_high + 1e-3)
            assert np.all(target.q >= lower + 0.02 - 1e-9) and np.all(target.q <= upper - 0.02 + 1e-9)
            np.testing.assert_allclose(kin.fk(target.q).xyz, target.pose.xyz, atol=1e-3)
            if prev is not None:
                assert np.abs(target.q - prev.q).max() <= 2.0 * 0.05 + 1e-9
                assert np.linalg.norm(target.pose.xyz - prev.pose.xyz) <= 0.03 + 1e-3
            prev = target
        run(ex, t + 500 * MS, t, step_ns=50 * MS)
        t += 500 * MS


# ---- operator takeovers (core/intervention.py's OperatorStream inside the executor) --------------------------------
def drive(ex, until_ns, start_ns, action=None, intervene=True, step_ns=5 * MS):
    """Ticks the executor with fresh joint states; while `action` is given the operator streams it every 10 ms."""
    outs = []
    for t in range(start_ns, until_ns, step_ns):
        ex.on_joint_state(HOME, 0.08, t)
        if action is not None and t % (10 * MS) == 0:
            ex.on_operator(intervene, np.asarray(action, np.float32), t)
        outs.append(ex.tick(t))
    return outs


def test_a_takeover_gets_the_next_due_step_chains_from_the_commanded_pose_and_hands_back_at_the_next_chunk(kin):
    ex = make(kin)
    policy = np.full((8, 5), 0.1, np.float32)
    op = np.array([0.0, 0.4, -0.2, 0.0, 0.5], np.float32)
    send(ex, 1, 1, policy, 1000 * MS)                                     # steps due 1050, 1100, ..., 1400
    drive(ex, 1120 * MS, 1000 * MS)                                       # steps 0, 1: the policy's
    drive(ex, 1300 * MS, 1120 * MS, op)                                   # takeover at 1120: steps 2.. (1150 on)
    outs = drive(ex, 1460 * MS, 1300 * MS, np.zeros(5), intervene=False)  # hand-back: the rest stays the operator's
    (r,) = reports(outs)
    assert r.indices == list(range(8)) and r.sources == [0, 0, 1, 1, 1, 1, 1, 1] and r.ended_by == "complete"
    np.testing.assert_array_equal(r.actions[:2], policy[:2])
    np.testing.assert_array_equal(r.actions[2:5], np.tile(op, (3, 1)))    # due 1150, 1200, 1250
    np.testing.assert_array_equal(r.actions[5:], np.zeros((3, 5)))        # due 1300 on: the operator's last action
    # Each operator step builds on the previous commanded target: no jump at the takeover.
    done = [s.target.pose.xyz for s in ex.schedule.active.steps] if ex.schedule.active else None
    assert done is None
    t2 = ex.anchor.pose.xyz
    np.testing.assert_allclose(t2 - kin.fk(HOME).xyz, 2 * 0.1 * SCALE[:3] + 3 * op[:3] * SCALE[:3], atol=1e-9)
    # The next chunk is the policy's again from its first step, starting from the operator's last target.
    send(ex, 2, 1, policy, 1460 * MS)
    assert not ex.schedule.active.planned                                 # the operator still held the arm
    (r2,) = reports(drive(ex, 1960 * MS, 1460 * MS))
    assert r2.sources == [0] * 8
    np.testing.assert_array_equal(r2.actions, policy)
    np.testing.assert_allclose(ex.anchor.pose.xyz - t2, 8 * 0.1 * SCALE[:3], atol=1e-9)


def test_a_chunk_arriving_while_the_operator_drives_never_reaches_the_controller(kin):
    ex = make(kin, backend="joint_trajectory")
    op = np.array([0.3, 0.0, 0.0, 0.0, 1.0], np.float32)
    drive(ex, 1000 * MS, 900 * MS, op)                                    # no chunk yet: nothing runs (no events)
    out = send(ex, 1, 1, np.full((8, 5), -0.5, np.float32), 1000 * MS)
    assert not [c for c in out.commands if isinstance(c, TrajectoryCommand)]
    outs = drive(ex, 1460 * MS, 1000 * MS, op)
    trajectories = [c for o in outs for c in o.commands if isinstance(c, TrajectoryCommand)]
    assert len(trajectories) == 8 and all(len(t.times_ns) == 1 for t in trajectories)   # one step per plan
    (r,) = reports(outs)
    assert r.sources == [1] * 8
    np.testing.assert_array_equal(r.actions, np.tile(op, (8, 1)))
    np.testing.assert_allclose(ex.anchor.pose.xyz - kin.fk(HOME).xyz, 8 * 0.3 * SCALE[:3] * [1, 0, 0], atol=1e-9)


def test_operator_steps_pass_the_safety_layer(kin):
    ex = make(kin)
    with pytest.raises(ValueError, match="finite"):
        ex.on_operator(True, np.array([np.nan, 0, 0, 0, 0], np.float32), 0)
    with pytest.raises(ValueError, match="5 numbers"):
        ex.on_operator(True, np.zeros(3, np.float32), 0)
    low_z = 0.012
    for k in range(8):                                                   # pushing down, far too fast, for 64 steps
        send(ex, k, 1, np.zeros((8, 5), np.float32), (1000 + 500 * k) * MS)
        outs = drive(ex, (1500 + 500 * k) * MS, (1000 + 500 * k) * MS, [0.0, 0.0, -9.0, 0.0, 0.0])
        for r in reports(outs):
            assert set(r.sources) == {1} and (r.actions[:, 2] >= -1.0).all()    # clipped to action.low
    assert ex.anchor.pose.xyz[2] >= low_z - 1e-9 and ex.limit_log.counts.get("workspace.low[z]", 0) > 0


def test_a_lost_operator_stream_holds_ends_the_chunk_and_refuses_chunks_until_the_next_episode(kin):
    ex = make(kin)
    send(ex, 1, 1, np.zeros((8, 5), np.float32), 1000 * MS)
    drive(ex, 1120 * MS, 1000 * MS, np.full(5, 0.2))                    # takes over at 1050; last command at 1110
    outs = drive(ex, 1460 * MS, 1120 * MS)                              # stale after 1360: step 7 (1400) has nobody
    (r,) = reports(outs)
    assert r.ended_by == "teleop_lost" and r.truncated and r.indices == list(range(7)) and r.sources == [1] * 7
    assert ex.backend.motion.holding is not None                        # held where it is measured
    with pytest.raises(ChunkRefused, match="lost"):
        send(ex, 2, 1, np.zeros((8, 5), np.float32), 1500 * MS)
    send(ex, 3, 2, np.full((8, 5), 0.1, np.float32), 2000 * MS)          # the next episode: the policy's again
    (r3,) = reports(drive(ex, 2460 * MS, 2000 * MS))
    assert r3.sources == [0] * 8 and r3.ended_by == "complete"


def test_between_episodes_the_operator_drives_the_arm_and_nothing_is_reported(kin):
    ex = make(kin)
    ex.on_episode(1, True, 900 * MS)
    send(ex, 1, 1, np.zeros((8, 5), np.float32), 1000 * MS)
    drive(ex, 1460 * MS, 1000 * MS)
    before = ex.anchor.pose.xyz.copy()
    drive(ex, 1700 * MS, 1460 * MS, [0.5, 0.0, 0.0, 0.0, 0.0])          # mid-episode, no chunk running: nothing
    np.testing.assert_array_equal(ex.anchor.pose.xyz, before)
    ex.on_episode(1, False, 1700 * MS)                                 # the episode ends: holds, anchor measured
    outs = drive(ex, 2200 * MS, 1700 * MS, [0.5, 0.0, 0.0, 0.0, 0.0])
    assert not reports(outs)
    moved = ex.anchor.pose.xyz - kin.fk(HOME).xyz
    np.testing.assert_allclose(moved, [10 * 0.5 * SCALE[0], 0, 0], atol=1e-9)   # one step per 50 ms period
    ex.on_episode(2, True, 2200 * MS)                                  # still intervening: the first step is theirs
    send(ex, 2, 2, np.zeros((8, 5), np.float32), 2200 * MS)
    (r,) = reports(drive(ex, 2710 * MS, 2200 * MS, [0.0, 0.5, 0.0, 0.0, 0.0]))
    assert r.sources == [1] * 8
