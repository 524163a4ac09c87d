"""Human interventions without ROS: who commands each control step (takeover on the next tick, hand-back at the
next decision, a lost stream holds), how executed steps become replay rows (operator actions in place, the
intervention mask, no noise, SOURCE_EXTERNAL, the optional takeover penalty), how the learner samples them
(DSRL-NA: a fixed share of each batch; DSRL-SAC: never), the simulated operator on the real sim arm, the device
mappings, and the episode cycle's end on a lost teleop stream."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.chunk_replay import SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL, ChunkEpisode
from dsrl_ros.core.episode_cycle import RUNNING, TIMEOUT, CycleSettings, EpisodeCycle
from dsrl_ros.core.episode_recorder import EpisodeRecorder
from dsrl_ros.core.intervention import (LOST, OPERATOR, POLICY, OperatorStream, executed_row, intervention_mask,
                                        operator_executed)
from dsrl_ros.core.learner import Learner
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.core.steering import PolicySteering
from dsrl_ros.core.teleop_input import JoyMapper, KeyMapper
from policy_helpers import batches_drawn_by

MS = 1_000_000
LOW, HIGH = [-0.5, -0.5, -0.5, -1.0, -1.0], [0.5, 0.5, 0.5, 1.0, 1.0]


# ---- who commands a step ------------------------------------------------------------------------------------------
def test_a_takeover_preempts_the_running_chunk_on_the_next_tick_and_hand_back_waits_for_the_next_decision():
    s = OperatorStream(250 * MS, LOW, HIGH)
    assert s.next_step(0, at_decision_start=True).source == POLICY
    assert s.next_step(50 * MS, at_decision_start=False).source == POLICY
    s.on_command(True, [3.0, -0.2, 0.0, 0.0, 1.0], now_ns=60 * MS)     # mid-chunk
    step = s.next_step(100 * MS, at_decision_start=False)               # the very next tick is the operator's
    assert step.source == OPERATOR and step.action.tolist() == pytest.approx([0.5, -0.2, 0.0, 0.0, 1.0])  # clipped
    s.on_command(False, [0.1, 0.0, 0.0, 0.0, 1.0], now_ns=120 * MS)     # hand back ...
    step = s.next_step(150 * MS, at_decision_start=False)
    assert step.source == OPERATOR and step.action[0] == pytest.approx(0.1)   # ... not mid-decision
    assert s.next_step(200 * MS, at_decision_start=True).source == POLICY   # at the next decision
    assert s.takeovers == 1 and not s.wants_arm(200 * MS)


def test_a_stream_that_goes_stale_during_a_takeover_holds_until_the_next_episode():
    s = OperatorStream(250 * MS, LOW, HIGH)
    s.on_command(True, np.zeros(5), now_ns=0)
    assert s.next_step(100 * MS, at_decision_start=True).source == OPERATOR
    assert s.next_step(251 * MS, at_decision_start=False).source == LOST
    s.on_command(True, np.zeros(5), now_ns=300 * MS)                    # even a fresh command: still held
    assert s.next_step(310 * MS, at_decision_start=True).source == LOST
    s.new_episode()
    assert s.next_step(320 * MS, at_decision_start=True).source == OPERATOR   # still intervening: takes the arm
    handed_back = OperatorStream(250 * MS, LOW, HIGH)
    handed_back.on_command(True, np.zeros(5), now_ns=0)
    handed_back.next_step(10 * MS, at_decision_start=True)
    handed_back.on_command(False, np.zeros(5), now_ns=20 * MS)          # hand back, then the device goes quiet
    assert handed_back.next_step(30 * MS, at_decision_start=False).source == OPERATOR
    assert handed_back.next_step(500 * MS, at_decision_start=True).source == POLICY   # the hand-back stands
    quiet = OperatorStream(250 * MS, LOW, HIGH)
    quiet.on_command(False, np.zeros(5), now_ns=0)                      # not driving: staleness does not matter
    assert quiet.next_step(10_000 * MS, at_decision_start=False).source == POLICY


@pytest.mark.parametrize("action, error", [([np.nan, 0, 0, 0, 0], "finite"), ([0.0] * 4, "expected 5 numbers")])
def test_a_bad_operator_action_is_refused(action, error):
    with pytest.raises(ValueError, match=error):
        OperatorStream(250 * MS, LOW, HIGH).on_command(True, action, 0)


# ---- executed steps -> replay rows ----------------------------------------------------------------------------------
D, T = 5, 4
CHUNK = D * T


def test_executed_row_puts_operator_actions_in_place_and_masks_their_steps():
    chunk = np.arange(CHUNK, dtype=np.float32)
    row, mask = executed_row(chunk, D, [0, 1, 2, 3], [POLICY, POLICY, OPERATOR, OPERATOR],
                             np.full((4, D), -7.0, np.float32))
    assert mask == 0b1100 == intervention_mask([0, 1, 2, 3], [0, 0, 1, 1])
    assert row[:10].tolist() == chunk[:10].tolist() and (row[10:] == -7).all()
    assert operator_executed([0, 1], [0, 0], np.zeros((2, D))) is None   # all policy: the chunk as published
    with pytest.raises(ValueError, match="executed_sources"):
        executed_row(chunk, D, [0], [5], np.zeros((1, D)))


def obs(t):
    return {"image": np.full((84, 84, 3), t, np.uint8), "proprio": np.full(11, t, np.float32)}


def record(recorder, executed_per_decision, outcome="success", episode=1):
    """Decision k: noise k + 1, action 100 + k; executed_per_decision[k]: the operator's steps {index: value}."""
    recorder.start(episode)
    for k, operator_steps in enumerate(executed_per_decision):
        seq = 100 * episode + k
        recorder.observation(episode, seq, obs(k), final=False)
        recorder.chunk(episode, seq, np.full(CHUNK, k + 1.0), np.full(CHUNK, 100.0 + k), SOURCE_ACTOR)
        sources = [OPERATOR if i in operator_steps else POLICY for i in range(T)]
        actions = np.array([[operator_steps.get(i, 100.0 + k)] * D for i in range(T)], np.float32)
        recorder.result(episode, seq, 0.0, "complete", operator_executed(range(T), sources, actions))
    recorder.observation(episode, 10**6, obs(99), final=True)
    recorder.end(episode, outcome, 0.0, len(executed_per_decision))
    (done,) = recorder.poll(0.0)
    return done


def test_rows_hold_operator_steps_as_executed_with_their_mask_no_noise_and_the_external_source():
    done = record(EpisodeRecorder(CHUNK, "time_penalty", action_dim=D),
                  [{}, {2: -0.3, 3: -0.4}, {0: 0.25, 1: 0.5, 2: 0.5, 3: 0.5}, {}])
    rows = done.rows
    assert rows["intervention"].tolist() == [0, 0b1100, 0b1111, 0, 0]
    assert rows["source"].tolist() == [SOURCE_ACTOR, SOURCE_EXTERNAL, SOURCE_EXTERNAL, SOURCE_ACTOR, SOURCE_EXTERNAL]
    assert (rows["noise"][1:3] == 0).all() and (rows["noise"][0] == 1).all() and (rows["noise"][3] == 4).all()
    assert rows["action"][1].reshape(T, D)[:, 0].tolist() == pytest.approx([101, 101, -0.3, -0.4])
    assert rows["action"][2].reshape(T, D)[:, 0].tolist() == pytest.approx([0.25, 0.5, 0.5, 0.5])
    assert rows["action"][3].tolist() == [103.0] * CHUNK                 # the policy's own chunk, untouched
    assert done.intervention_rows == 2 and done.operator_steps == 6
    assert rows["reward"].tolist() == [-1, -1, -1, 0, 0]                 # no penalty by default


def test_the_takeover_penalty_charges_the_decision_the_takeover_judged():
    recorder = EpisodeRecorder(CHUNK, "time_penalty", action_dim=D, takeover_penalty=2.0)
    # decision 1: the operator took over mid-chunk (charged there); decision 2 continues that takeover (no charge);
    # decision 4 starts a takeover at its first step: the decision before it (3) is charged.
    done = record(recorder, [{}, {3: 0.1}, {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.1}, {}, {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.1},
                             {}])
    assert done.rows["reward"].tolist() == [-1, -3, -1, -3, -1, 0, 0]


# ---- the learner's batches ------------------------------------------------------------------------------------------
TINY = PolicyConfig(image_shape=(8, 8, 3), proprio_dim=3, action_dim=2, chunk_len=2, num_train_steps=10,
                    num_inference_steps=2, cnn_channels=(4,), image_feature_dim=4, hidden_dim=16, num_blocks=1,
                    time_embed_dim=8)
POLICY_REWARD, OPERATOR_REWARD = -1.0, 5.0       # tells a sampled transition's kind


def mixed_episode(chunks: int = 10, operator_rows=(3,)) -> dict:
    rows = ChunkEpisode.start()
    for k in range(chunks):
        operated = k in operator_rows
        rows.add_chunk({"image": np.zeros((8, 8, 3), np.uint8), "proprio": np.zeros(3, np.float32)},
                       np.zeros(4) if operated else np.full(4, 0.1), np.full(4, 0.2),
                       OPERATOR_REWARD if operated else POLICY_REWARD, False,
                       SOURCE_EXTERNAL if operated else SOURCE_BASE, intervention=0b11 if operated else 0)
    return rows.finish({"image": np.zeros((8, 8, 3), np.uint8), "proprio": np.zeros(3, np.float32)})


def batches_drawn(tmp_path, **agent) -> list[dict]:
    torch.manual_seed(0)
    config = AgentConfig(hidden_dim=16, num_layers=2, batch_size=20, warmup_episodes=1, utd=1.0, **agent)
    learner = Learner(PolicySteering(DiffusionPolicy(TINY).eval(), config), tmp_path, log=lambda s: None)
    learner.add_episode(mixed_episode(), {})
    learner.add_episode(mixed_episode(), {})            # 10 transitions x utd 1 = 10 updates owed
    drawn = batches_drawn_by(learner, 10)
    assert learner.error is None and len(drawn) == 10
    return drawn


def test_dsrl_na_draws_the_configured_share_of_every_batch_from_intervention_rows(tmp_path):
    # 1 row in 10 is an intervention row: drawn uniformly, a batch of 20 would hold ~2.
    for b in batches_drawn(tmp_path / "half", algo="na"):
        assert int((b["reward"] == OPERATOR_REWARD).sum()) >= 10             # 10 from the intervention part
        assert (b["noise"][b["reward"] == OPERATOR_REWARD] == 0).all()
    uniform = batches_drawn(tmp_path / "off", algo="na", intervention_fraction=0.0)
    assert sum(int((b["reward"] == OPERATOR_REWARD).sum()) for b in uniform) < 60      # ~20 of 200 expected


def test_dsrl_sac_never_trains_on_intervention_rows(tmp_path):
    for b in batches_drawn(tmp_path, algo="sac"):
        assert (b["reward"] == POLICY_REWARD).all()


# ---- the simulated operator on the real sim arm ---------------------------------------------------------------------
def test_the_scripted_operator_takes_over_when_the_policy_drifts_and_hands_back_after_its_steps():
    from dsrl_ros.sim import make_env
    from dsrl_ros.sim.scripted_operator import ScriptedOperator, state_vector

    env = make_env("lift", image_size=16, render=False)
    env.reset(seed=3)
    operator = ScriptedOperator("lift", threshold=0.5, takeover_steps=5)
    intervene, expert = operator.on_state(state_vector(env, resets=1))
    assert not intervene and np.abs(expert[:3]).max() > 0.5            # the expert wants to move
    assert not operator.on_chunk(np.tile(expert, (8, 1)))               # a policy doing the same: no takeover
    assert operator.on_chunk(-np.tile(expert, (8, 1)))                  # drifting away: take over
    sources = []
    for _ in range(12):
        intervene, action = operator.on_state(state_vector(env, resets=1))
        sources.append(intervene)
        env.step(action if intervene else np.zeros(5))
        operator.on_state(state_vector(env, resets=1))
    assert sources == [True] * 5 + [False] * 7                          # takeover_steps, then hand back
    assert operator.takeovers == 1
    lazy = ScriptedOperator("lift", threshold=10.0)
    lazy.on_state(state_vector(env, resets=1))
    assert not lazy.on_chunk(-np.tile(expert, (8, 1)))                  # nothing is that far off
    first_only = ScriptedOperator("lift", threshold=0.5, episodes=1)
    first_only.on_state(state_vector(env, resets=2))
    first_only.on_state(state_vector(env, resets=3))                    # its second episode
    assert not first_only.on_chunk(-np.tile(expert, (8, 1)))


class _RecordingEnv:
    """The real sim arm, remembering every action it was stepped with."""

    def __init__(self, env):
        self.env, self.stepped = env, []

    def reset(self, seed=None):
        self.stepped.clear()
        return self.env.reset(seed=seed)

    def step(self, action):
        self.stepped.append(np.array(action, np.float32))
        return self.env.step(action)

    def __getattr__(self, name):
        return getattr(self.env, name)


class _DriftOncePolicy:
    """A base policy whose first chunk moves up, away from the cube (the expert reaches for it), and whose later
    chunks are what the expert does now (no drift): one takeover, then the policy again."""

    def __init__(self, takeovers, chunk_len: int = 8):
        self.config, self.calls, self.chunk_len = type("C", (), {"n_obs_steps": 1})(), 0, chunk_len
        self.takeovers = takeovers

    def act(self, stacked, noise):
        self.calls += 1
        step = np.array([0.0, 0.0, 1.0, 0.0, -1.0], np.float32) if self.calls == 1 else self.takeovers.operator.action
        return np.tile(step, (self.chunk_len, 1)).astype(np.float32)


def test_headless_takeovers_follow_the_graphs_rules_and_rows_hold_what_the_arm_executed():
    from dsrl_ros.core.episode_recorder import episode_rows
    from dsrl_ros.rollout import run_episode
    from dsrl_ros.sim import make_env
    from dsrl_ros.sim.scripted_operator import ScriptedOperator, ScriptedTakeovers

    env = _RecordingEnv(make_env("lift", image_size=16, render=False, max_steps=24))
    takeovers = ScriptedTakeovers(ScriptedOperator("lift", threshold=0.5, takeover_steps=5), env,
                                  [-1.0] * 5, [1.0] * 5)
    policy = _DriftOncePolicy(takeovers)
    decisions = []
    result = run_episode(env, policy, lambda _obs: np.ones((8, 5), np.float32), seed=3, operator=takeovers,
                         on_chunk=lambda *d: decisions.append(type("D", (), dict(zip(
                             ("obs", "noise", "action", "reward", "success", "executed"), d), source=SOURCE_ACTOR))))
    # The first chunk drifts: the operator drives its 5 takeover steps and, handed back, the rest of that decision
    # (3 steps); the policy has the arm from the next decision on.
    assert decisions[0].executed[1] == [OPERATOR] * 8 and decisions[1].executed is None
    assert result.operator_steps == 8 and takeovers.operator.takeovers == 1
    rows = episode_rows(decisions, result.final_obs, result.success, "time_penalty", action_dim=5)
    executed = np.concatenate([rows["action"][k].reshape(8, 5) for k in range(len(decisions))])[:result.steps]
    np.testing.assert_array_equal(executed, np.stack(env.stepped))         # the rows hold what the arm did
    assert not np.allclose(env.stepped[0], [0, 0, 1, 0, -1])                # ... which was not the policy's chunk
    assert list(rows["source"][:2]) == [SOURCE_EXTERNAL, SOURCE_ACTOR] and rows["intervention"][0] == 0xFF
    assert not rows["noise"][0].any() and rows["noise"][1].any()
    patient = ScriptedTakeovers(ScriptedOperator("lift", threshold=10.0), env, [-1.0] * 5, [1.0] * 5)
    episode_two = run_episode(env, _DriftOncePolicy(patient), lambda _obs: np.ones((8, 5), np.float32), seed=4,
                              operator=patient)
    assert episode_two.operator_steps == 0                                 # an operator who never steps in


# ---- devices -------------------------------------------------------------------------------------------------------
NAMES = ["dx", "dy", "dz", "dyaw", "grip"]


def test_joy_axes_buttons_and_release_map_to_commands():
    joy = JoyMapper(NAMES, LOW, HIGH, axes=[1, 0, 4, -1], signs=[1, -1, 1, 1],
                    buttons={"start": 7, "abort": 6}, grip_button=0, intervene_button=5, deadband=0.1,
                    release_s=0.5)
    axes, buttons = [0.0] * 6, [0] * 8
    assert joy.update(axes, buttons, 0.0) == [] and joy.tick(0.0)[0] is False
    axes[1], axes[0], axes[4] = 0.8, 0.6, 0.05                          # deflect x, y (sign -1); z in the deadband
    intervene, action = (joy.update(axes, buttons, 1.0), joy.tick(1.0))[1]
    assert intervene and action.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, -1.0])   # clipped; grip open
    axes[1] = axes[0] = 0.0
    joy.update(axes, buttons, 1.1)
    assert joy.tick(1.3) == (True, pytest.approx(np.array([0, 0, 0, 0, -1.0])))   # within release_s
    assert joy.tick(1.7)[0] is False                                    # handed back
    buttons[7] = buttons[0] = 1
    assert joy.update(axes, buttons, 2.0) == ["start"] and joy.tick(2.0)[1][4] == 1.0   # grip toggled closed
    assert joy.update(axes, buttons, 2.1) == []                         # held, not pressed again


def test_keyboard_keys_move_one_dimension_each_and_send_buttons():
    keys = KeyMapper(NAMES, LOW, HIGH, release_s=0.3)
    keys.key("w", 0.0)
    keys.key("a", 0.0)
    keys.key("x", 0.0)
    intervene, action, buttons = keys.tick(0.1)
    assert intervene and action.tolist() == pytest.approx([0.5, 0.5, 0, 0, -1]) and buttons == ["abort"]
    assert keys.tick(0.5)[1].tolist() == pytest.approx([0, 0, 0, 0, -1])   # released: zero deltas, still driving
    keys.key(" ", 0.6)
    assert keys.tick(0.6)[0] is False


# ---- the episode ends, marked, when the operator's stream is lost ---------------------------------------------------
def test_a_lost_teleop_stream_ends_the_episode_as_a_time_limit_with_the_loss_in_its_detail():
    cycle = EpisodeCycle(CycleSettings(auto_reset=True, max_episode_steps=64))
    cycle.begin(0.0)
    assert cycle.reset_done(True, "", 0.0)[0].state == RUNNING
    assert cycle.on_result(1, 8, False, False, 0.5, "complete") == []
    (end,) = cycle.on_result(1, 3, False, True, 1.0, "teleop_lost")
    assert end.outcome == TIMEOUT and "teleop_lost" in end.detail and end.steps == 11
