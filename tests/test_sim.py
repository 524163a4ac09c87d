"""Embedded sim arm: determinism, shapes, action validation, expert success, camera content."""

import numpy as np
import pytest

from dsrl_ros.sim import PROPRIO_LAYOUT, ArmEnv, ScriptedExpert, make_env


@pytest.fixture(scope="module")
def env():
    e = make_env("lift", image_size=84)
    yield e
    e.close()


def rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for a in actions:
        trace.append(env.step(a)[0])
    return trace


def test_reset_and_rollout_are_deterministic_for_a_seed(env):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(15, 5))
    a, b = rollout(env, 7, actions), rollout(env, 7, actions)
    for oa, ob in zip(a, b):
        assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(oa["proprio"], ob["proprio"])


def test_seeds_randomise_the_cube_pose(env):
    poses = []
    for seed in range(5):
        env.reset(seed=seed)
        pos, yaw = env.cube_pose()
        poses.append((*pos[:2], yaw))
    assert len({tuple(np.round(p, 4)) for p in poses}) == 5


def test_observation_layout(env):
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (84, 84, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (11,) and obs["proprio"].dtype == np.float32
    assert info == {"success": False, "step": 0}
    ee, _ = env.ee_pose()
    np.testing.assert_allclose(obs["proprio"][PROPRIO_LAYOUT["ee_position"]], ee, atol=1e-6)
    assert obs["proprio"][PROPRIO_LAYOUT["gripper_width"]][0] == pytest.approx(env.gripper_width(), abs=1e-6)


@pytest.mark.parametrize("bad,match", [(np.zeros(4), r"action: expected shape \(5,\)"),
                                       (np.array([0, 0, np.nan, 0, 0]), "action: expected finite")])
def test_bad_actions_raise_value_error_naming_action(env, bad, match):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(bad)


def test_out_of_range_actions_are_clipped(env):
    env.reset(seed=3)
    clipped = env.step(np.array([1.0, 0, 0, 0, -1]))[0]["proprio"]
    env.reset(seed=3)
    huge = env.step(np.array([50.0, 0, 0, 0, -50]))[0]["proprio"]
    np.testing.assert_array_equal(clipped, huge)


def test_zero_actions_truncate_at_max_steps():
    env = ArmEnv("lift", render=False, max_steps=12)
    env.reset(seed=0)
    for step in range(1, 13):
        _, reward, terminated, truncated, info = env.step(np.zeros(5))
        assert reward == 0.0 and not terminated and truncated == (step == 12) and info["step"] == step


@pytest.mark.parametrize("task", ["lift", "place", "lift_block", "lift_block_tray"])
def test_scripted_expert_succeeds(task):
    env = ArmEnv(task, render=False)
    expert = ScriptedExpert(env)
    for seed in range(5):
        env.reset(seed=seed)
        expert.reset()
        done = False
        while not done:
            _, reward, terminated, truncated, info = env.step(expert.act())
            done = terminated or truncated
        assert info["success"] and reward == 1.0, f"{task} seed {seed}"


def red_pixels(image):
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return np.argwhere((r > 150) & (g < 80) & (b < 80))


def test_camera_shows_the_cube_where_it_is(env):
    centres = []
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        pixels = red_pixels(obs["image"])
        assert len(pixels) >= 4, "cube not visible"
        centres.append(pixels.mean(axis=0))
    assert np.abs(centres[0] - centres[1]).max() > 2  # different cube pose, different place in the image


def test_unknown_task_and_bad_size_are_rejected():
    with pytest.raises(ValueError, match="task: expected one of"):
        ArmEnv("stack")
    with pytest.raises(ValueError, match="image_size"):
        ArmEnv("lift", image_size=4)


def test_gl_error_names_the_variable_and_the_packages(monkeypatch):
    from dsrl_ros.sim.gl import choose_gl_backend, render_context_error

    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert choose_gl_backend() == "osmesa"  # an explicit choice wins
    message = str(render_context_error(RuntimeError("no display")))
    assert "MUJOCO_GL=osmesa" in message and "libegl1" in message and "libosmesa6" in message


def run_expert(env, expert, seed):
    obs, _ = env.reset(seed=seed)
    expert.reset()
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        done = terminated or truncated
    return info["success"]


def test_snapshot_restore_repeats_the_future_bit_for_bit(env):
    actions = np.random.default_rng(1).uniform(-1, 1, size=(20, 5))
    env.reset(seed=4)
    for a in actions[:7]:
        env.step(a)
    snap = env.snapshot()
    first = [env.step(a) for a in actions[7:]]
    env.restore(snap)
    again = [env.step(a) for a in actions[7:]]
    for (oa, *ra), (ob, *rb) in zip(first, again):
        assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(oa["proprio"], ob["proprio"])
        assert ra == rb
    env.restore(snap)
    assert env.observe()["proprio"].tolist() != again[-1][0]["proprio"].tolist()   # restored, not left at the end


def test_random_grasp_expert_takes_both_grasps_on_the_cube():
    env = ArmEnv("lift", render=False)
    expert = ScriptedExpert(env, rng=np.random.default_rng(0), grasp="random")
    turns, yaws = [], []
    for seed in range(8):
        assert run_expert(env, expert, seed), seed
        _, cube_yaw = env.cube_pose()
        turns.append(expert.turn)
        yaws.append(abs(((env.ee_pose()[1] - cube_yaw) + np.pi / 2) % np.pi - np.pi / 2))  # 0: along, pi/2: across
    assert set(turns) == {False, True}
    assert all(y < 0.1 or y > np.pi / 2 - 0.1 for y in yaws)      # aligned with a face either way


def test_block_fits_only_across_its_narrow_side():
    """The default benchmark's shift: on the 4 x 10 cm block the cube expert's grasp works one way only."""
    env = ArmEnv("lift_block", render=False)
    assert env.object_half[1] * 2 > 2 * 0.04 > env.object_half[0] * 2   # longer than the gripper opens
    fits = ScriptedExpert(env)
    cube_way = ScriptedExpert(env, grasp="random")
    cube_way.block = False                                               # grasp it as if it were a cube
    for seed in range(6):
        assert run_expert(env, fits, seed), seed
        outcome = {}
        for turn in (False, True):
            env.reset(seed=seed)
            cube_way.reset()
            cube_way.turn = turn
            outcome[turn] = _run_without_reset(env, cube_way)
        assert sorted(outcome.values()) == [False, True], (seed, outcome)   # one grasp lifts it, the other cannot


def _run_without_reset(env, expert):
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(expert.act())
        done = terminated or truncated
    return info["success"]


def test_block_yaw_spans_half_a_turn():
    env = ArmEnv("lift_block", render=False)
    yaws = []
    for seed in range(40):
        env.reset(seed=seed)
        yaws.append(env.cube_pose()[1])
    assert min(yaws) < -np.pi / 4 - 0.2 and max(yaws) > np.pi / 4 + 0.2


def test_tray_blocks_come_lengthwise_or_crosswise_at_lift_blocks_positions():
    tray, block = ArmEnv("lift_block_tray", render=False), ArmEnv("lift_block", render=False)
    assert (tray.object_half == block.object_half).all()
    near = {0.0: 0, np.pi / 2: 0}
    for seed in range(60):
        tray.reset(seed=seed)
        block.reset(seed=seed)
        (xyz, yaw), (block_xyz, _) = tray.cube_pose(), block.cube_pose()
        assert np.allclose(xyz, block_xyz), "the offset is drawn after the position: the same seeds, the same spots"
        orientation = min(near, key=lambda centre: abs(yaw - centre))
        assert abs(yaw - orientation) <= np.pi / 12 + 1e-6, f"seed {seed}: yaw {yaw:.3f} is neither within 15 deg"
        near[orientation] += 1
    assert min(near.values()) >= 15, f"both orientations come up: {near}"


def test_config_knows_every_sim_task():
    from dsrl_ros.config import SIM_TASKS
    from dsrl_ros.sim import TASKS

    assert sorted(SIM_TASKS) == sorted(TASKS)
