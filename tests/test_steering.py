"""DSRL around the frozen policy: chunk-level transitions, replay pairing, resume determinism, actor files."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dsrl_ros.cli import main as cli_main
from dsrl_ros.commands.train_steer import _run_episode
from dsrl_ros.core.chunk_replay import (SOURCE_ACTOR, SOURCE_BASE, SOURCE_EXTERNAL, ChunkEpisode, ChunkReplay,
                                        chunk_schema)
from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig
from dsrl_ros.core.ram_episodes import RamEpisodes
from dsrl_ros.core.agent_config import AgentConfig
from dsrl_ros.core.steering import PolicySteering, load_actor
from policy_helpers import SIM_TINY as TINY

STEER = AgentConfig(hidden_dim=32, num_layers=2, batch_size=16, utd=2)


class ScriptedEnv:
    """Fake env: 1-D 'position' obs; success (reward 1) at step `success_at`, else time limit at max_steps."""

    def __init__(self, success_at=None, max_steps=10):
        self.success_at, self.max_steps = success_at, max_steps

    def reset(self, seed=None):
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return {"image": np.full((84, 84, 3), self.t, np.uint8), "proprio": np.full(11, self.t, np.float32)}

    def step(self, action):
        self.t += 1
        success = self.t == self.success_at
        return self._obs(), float(success), success, self.t >= self.max_steps and not success, {"success": success}


def test_chunk_transitions_sum_rewards_and_mark_only_success_terminal():
    policy = DiffusionPolicy(TINY).eval()
    steering = PolicySteering(policy, STEER)
    rng = np.random.default_rng(0)
    success = _run_episode(ScriptedEnv(success_at=6), policy, steering, rng, seed=0, warmup=True,
                           reward_mode="success", execute_steps=None)
    rows = success["rows"]
    # Chunks of 4: steps 1-4, then 5-6 (success at 6 ends the second chunk early); plus the final obs row.
    assert success["chunks"] == 2 and success["steps"] == 6 and success["success"]
    assert rows["reward"].tolist() == [0.0, 1.0, 0.0] and rows["terminal"].tolist() == [0.0, 1.0, 0.0]
    assert rows["proprio"][:, 0].tolist() == [0, 4, 6]      # obs at each chunk start, then the final obs
    assert rows["source"].tolist() == [SOURCE_BASE, SOURCE_BASE, SOURCE_EXTERNAL]
    timeout = _run_episode(ScriptedEnv(success_at=None, max_steps=10), policy, steering, rng, seed=0, warmup=False,
                           reward_mode="time_penalty", execute_steps=None)
    rows = timeout["rows"]
    assert not timeout["success"] and rows["terminal"].sum() == 0  # time limit: bootstrap, not terminal
    assert rows["reward"].tolist() == [-1.0, -1.0, -1.0, 0.0]    # time penalty per chunk; final row carries none
    assert rows["proprio"][:, 0].tolist() == [0, 4, 8, 10] and rows["source"][0] == SOURCE_ACTOR


def test_replay_pairs_each_row_with_the_next_row_of_its_episode():
    schema = chunk_schema((84, 84, 3), 11, 20)
    replay = ChunkReplay(RamEpisodes(schema), lambda img, pro: pro[:, :1].copy(), lambda a: a)
    for e, source in enumerate([SOURCE_EXTERNAL, SOURCE_ACTOR]):
        ep = ChunkEpisode.start()
        for k in range(3):
            obs = {"image": np.zeros((84, 84, 3), np.uint8), "proprio": np.full(11, 10 * e + k, np.float32)}
            ep.add_chunk(obs, np.full(20, k), np.full(20, k), reward=k, terminal=False, source=source)
        replay.add_episode(ep.finish({"image": np.zeros((84, 84, 3), np.uint8),
                                      "proprio": np.full(11, 10 * e + 3, np.float32)}))
    assert replay.n_transitions == 6
    batch = replay.sample(256, np.random.default_rng(0))
    assert torch.equal(batch["next_obs"], batch["obs"] + 1)          # never crosses into the next episode
    known = replay.sample(256, np.random.default_rng(0), noise_known_only=True)
    assert known["obs"].min() >= 10                                   # SAC never sees external rows


def test_n_step_returns_sum_discounted_rewards_within_the_episode_and_stop_at_success():
    schema = chunk_schema((84, 84, 3), 11, 20)
    replay = ChunkReplay(RamEpisodes(schema), lambda img, pro: pro[:, :1].copy(), lambda a: a)
    for e, (rewards, success) in enumerate([([1.0, 2.0, 4.0, 8.0], False), ([1.0, 2.0, 4.0], True)]):
        ep = ChunkEpisode.start()
        for k, r in enumerate(rewards):
            obs = {"image": np.zeros((84, 84, 3), np.uint8), "proprio": np.full(11, 10 * e + k, np.float32)}
            ep.add_chunk(obs, np.ones(20), np.ones(20), reward=r, terminal=success and k == len(rewards) - 1,
                         source=SOURCE_ACTOR)
        replay.add_episode(ep.finish({"image": np.zeros((84, 84, 3), np.uint8),
                                      "proprio": np.full(11, 10 * e + len(rewards), np.float32)}))
    replay.set_returns(3, 0.5)
    rows = np.array([0, 1, 2, 3, 5, 6, 7])            # episode 0: rows 0-3 (+ final 4); episode 1: 5-7 (+ final 8)
    reward, terminal, next_row, discount = replay.n_step_returns(rows)
    assert reward.tolist() == pytest.approx([1 + 1 + 1, 2 + 2 + 2, 4 + 4, 8, 1 + 1 + 1, 2 + 2, 4])
    assert next_row.tolist() == [3, 4, 4, 4, 8, 8, 8]            # n chunks on, never past the final observation
    assert discount.tolist() == pytest.approx([0.125, 0.125, 0.25, 0.5, 0.125, 0.25, 0.5])
    assert terminal.tolist() == [0, 0, 0, 0, 1, 1, 1]             # a success ends the sum: nothing to bootstrap
    batch = replay.sample(64, np.random.default_rng(0))
    starts = batch["obs"][:, 0].numpy()
    assert torch.equal(batch["next_obs"][:, 0], torch.as_tensor(np.minimum(starts + 3, np.where(starts < 10, 4, 13))))
    replay.set_returns(1, 0.5)
    assert "discount" not in replay.sample(8, np.random.default_rng(0))   # one-step: the agent's own gamma


def test_won_marks_the_rows_of_successful_episodes_whose_noise_is_known():
    schema = chunk_schema((84, 84, 3), 11, 20)
    replay = ChunkReplay(RamEpisodes(schema), lambda img, pro: pro[:, :1].copy(), lambda a: a)
    # episode 0: time limit; 1: success with an operator row first; 2: success at its first chunk
    for e, (sources, success) in enumerate([([SOURCE_ACTOR] * 3, False),
                                            ([SOURCE_EXTERNAL, SOURCE_BASE, SOURCE_ACTOR], True),
                                            ([SOURCE_ACTOR], True)]):
        ep = ChunkEpisode.start()
        for k, source in enumerate(sources):
            obs = {"image": np.zeros((84, 84, 3), np.uint8), "proprio": np.full(11, 10 * e + k, np.float32)}
            ep.add_chunk(obs, np.full(20, k), np.full(20, k), reward=0.0, terminal=success and k == len(sources) - 1,
                         source=source, intervention=1 if source == SOURCE_EXTERNAL else 0)
        replay.add_episode(ep.finish({"image": np.zeros((84, 84, 3), np.uint8),
                                      "proprio": np.full(11, 10 * e + 9, np.float32)}))
        if e == 0:
            assert replay.row_won().tolist() == [0, 0, 0, 0]          # the cache follows add_episode
    # rows: ep 0 = 0-2 (+3 final), ep 1 = 4-6 (+7 final), ep 2 = 8 (+9 final); final rows carry no noise
    assert replay.row_won().tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 1, 0]
    batch = replay.sample(256, np.random.default_rng(0))
    starts = batch["obs"][:, 0].numpy()
    expected = np.isin(starts, [11, 12, 20]).astype(np.float32)      # ep 1's noise rows and ep 2's one row
    assert np.array_equal(batch["won"].numpy(), expected) and expected.any() and not expected.all()


def test_the_yaml_winner_regression_reaches_the_actor_update():
    from dsrl_ros.config import load_config

    policy = DiffusionPolicy(TINY).eval()
    for weight in (0.0, 3.0):
        learner = load_config("robot_configs/sim_arm.yaml", [f"learner.winner_regression={weight}"]).learner
        steering = PolicySteering(policy, AgentConfig.of(learner))
        assert steering.agent.config.winner_regression == weight
        replay = ChunkReplay(RamEpisodes(chunk_schema((84, 84, 3), 11, 20)), steering.features,
                             steering.normalize_actions)
        ep = ChunkEpisode.start()
        obs = {"image": np.zeros((84, 84, 3), np.uint8), "proprio": np.zeros(11, np.float32)}
        ep.add_chunk(obs, np.ones(20), np.zeros(20), reward=0.0, terminal=True, source=SOURCE_ACTOR)
        replay.add_episode(ep.finish(obs))
        metrics = steering.update(replay.sample(8, np.random.default_rng(0)))
        assert ("winner_regression_loss" in metrics) == (weight > 0)


def test_a_config_saved_before_a_knob_existed_reads_as_it_was_trained():
    """ADDED_LATER: the shipped `lift` actor predates winner_regression (trained without it, today's default is 2)."""
    from dsrl_ros.core.agent_config import ADDED_LATER
    from dsrl_ros.core.checkpoint import PACKAGE_CHECKPOINTS

    saved = json.loads((PACKAGE_CHECKPOINTS / "steer_actor_lift_na" / "config.json").read_text())["agent"]
    assert "winner_regression" not in saved and AgentConfig().winner_regression == 2.0
    assert AgentConfig.from_dict(saved).winner_regression == 0.0
    assert AgentConfig.from_dict(saved | {"winner_regression": 5.0}).winner_regression == 5.0
    old = {k: v for k, v in AgentConfig().to_dict().items() if k not in ADDED_LATER}
    assert all(getattr(AgentConfig.from_dict(old), k) == v for k, v in ADDED_LATER.items())


def test_resume_reproduces_the_uninterrupted_run(tiny_policy_dir, tmp_path):
    common = ["train-steer", "--policy", str(tiny_policy_dir), "--warmup-episodes", "2", "--utd", "2",
              "--batch-size", "16", "--hidden-dim", "32", "--seed", "3", "--threads", "1"]
    assert cli_main([*common, "--out", str(tmp_path / "full"), "--episodes", "4"]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "split"), "--episodes", "3"]) == 0
    assert cli_main([*common, "--out", str(tmp_path / "split"), "--episodes", "4", "--resume"]) == 0
    full = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert full.keys() == split.keys()
    for key in full:
        assert torch.equal(full[key], split[key]), key
    hist = [json.loads(l) for l in (tmp_path / "full" / "episodes.jsonl").read_text().splitlines()]
    assert [h["warmup"] for h in hist] == [True, True, False, False] and hist[-1]["updates"] > 0
    assert (tmp_path / "full" / "learning_curve.png").exists()


def test_refuses_to_overwrite_a_run_without_resume(tiny_policy_dir, tmp_path):
    args = ["train-steer", "--policy", str(tiny_policy_dir), "--out", str(tmp_path / "r"), "--episodes", "2",
            "--warmup-episodes", "1", "--utd", "1", "--batch-size", "4", "--hidden-dim", "32", "--eval-episodes", "0"]
    assert cli_main(args) == 0
    before = (tmp_path / "r" / "checkpoint").resolve()
    assert cli_main(args) == 2
    assert (tmp_path / "r" / "checkpoint").resolve() == before          # nothing of the first run was touched


def test_an_offline_run_continues_online_and_trains_from_its_first_online_episode(tiny_policy_dir, tmp_path):
    """train-steer --offline, then train-steer --resume on the same directory: the online part plays its episodes
    (a fresh rollout RNG: an offline checkpoint has none) and owes utd x its own transitions, whatever ran offline."""
    tiny = ["--policy", str(tiny_policy_dir), "--batch-size", "4", "--hidden-dim", "16", "--eval-episodes", "0",
            "--threads", "1"]
    assert cli_main(["train-steer", "--out", str(tmp_path / "source"), "--episodes", "2", "--warmup-episodes", "1",
                     "--utd", "1", *tiny]) == 0
    run = tmp_path / "run"
    assert cli_main(["train-steer", "--offline", str(tmp_path / "source" / "replay.zarr"), "--out", str(run),
                     "--offline-updates", "50", *tiny]) == 0
    assert cli_main(["train-steer", "--out", str(run), "--resume", "--episodes", "2", "--warmup-episodes", "1",
                     "--utd", "1", *tiny]) == 0
    hist = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [h["warmup"] for h in hist] == [True, False]
    online_transitions = hist[1]["transitions"] - hist[0]["transitions"]
    final = json.loads((run / "actor" / "config.json").read_text())["metadata"]
    assert final["updates"] == 50 + online_transitions                # utd 1 per online transition, none skipped


def test_train_steer_with_no_episode_past_the_warm_up_writes_nothing(tiny_policy_dir, tmp_path, capsys):
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--out", str(tmp_path / "r"),
                     "--episodes", "0"]) == 2
    assert "--episodes: expected more than learner.warmup_episodes (10)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_saved_actor_loads_and_picks_the_same_noise(tiny_policy_dir, tmp_path):
    policy = DiffusionPolicy(TINY).eval()
    steering = PolicySteering(policy, STEER)
    steering.save_actor(tmp_path / "actor")
    loaded = load_actor(tmp_path / "actor", policy)
    obs = ScriptedEnv().reset()[0]
    np.testing.assert_array_equal(loaded.choose_noise(obs, deterministic=True),
                                  steering.choose_noise(obs, deterministic=True))
    assert steering.choose_noise(obs).shape == TINY.noise_shape
    other = DiffusionPolicy(PolicyConfig(chunk_len=2)).eval()
    with pytest.raises(ValueError, match="noise_shape"):
        load_actor(tmp_path / "actor", other)


def test_eval_steer_reports_base_and_steered_on_the_same_seeds(tiny_policy_dir, tmp_path, capsys):
    policy = DiffusionPolicy(TINY).eval()
    PolicySteering(policy, STEER).save_actor(tmp_path / "actor")
    assert cli_main(["eval", "--policy", str(tiny_policy_dir), "--steer", str(tmp_path / "actor"),
                     "--episodes", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["agent"] == "steered_policy" and summary["episodes"] == 2
    # "The same seeds": the base part equals a base-only evaluation of those seeds, interval and all.
    assert cli_main(["eval", "--policy", str(tiny_policy_dir), "--episodes", "2", "--json"]) == 0
    base = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["base_success_rate"], summary["base_ci_low"], summary["base_ci_high"]) == \
        (base["success_rate"], base["ci_low"], base["ci_high"])


def test_the_task_an_actor_was_trained_on_is_the_one_eval_steer_plays(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--task", "lift_block_tray", "--out", str(out),
                     "--episodes", "2", "--warmup-episodes", "1", "--utd", "1", "--batch-size", "8", "--hidden-dim",
                     "32", "--eval-episodes", "0", "--threads", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"] == "lift_block_tray"
    for extra, task in (([], "lift_block_tray"), (["--task", "lift"], "lift")):   # --task still overrides
        assert cli_main(["eval", "--policy", str(tiny_policy_dir), "--steer", str(out / "actor"), "--episodes", "1",
                         "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"] == task
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--task", "lift_box", "--out",
                     str(tmp_path / "bad"), "--episodes", "2", "--warmup-episodes", "1"]) == 2
    assert "--task: expected one of" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("algo", ["na", "sac"])
def test_own_cnn_encoder_trains_through_the_td_critic_and_ships_with_the_actor(tiny_policy_dir, tmp_path, algo,
                                                                               capsys):
    out = tmp_path / f"cnn_{algo}"
    assert cli_main(["train-steer", "--algo", algo, "--policy", str(tiny_policy_dir), "--out", str(out),
                     "--episodes", "3", "--warmup-episodes", "2", "--utd", "2", "--batch-size", "8",
                     "--hidden-dim", "32", "--encoder", "cnn", "--eval-episodes", "0", "--threads", "1"]) == 0
    tensors = load_file(str(out / "actor" / "model.safetensors"))
    assert any(k.startswith("encoder.image.") for k in tensors)
    checkpoint = load_file(str(out / "checkpoint" / "model.safetensors"))
    torch.manual_seed(0)
    fresh = PolicySteering(DiffusionPolicy(TINY).eval(), AgentConfig(encoder="cnn", hidden_dim=32))
    key = "encoder.mlp.0.weight"
    assert not torch.equal(checkpoint[key], fresh.agent.state_dict()[key])  # the encoder did learn
    capsys.readouterr()
    assert cli_main(["eval", "--policy", str(tiny_policy_dir), "--steer", str(out / "actor"), "--episodes", "1",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["agent"] == "steered_policy"


def test_actor_update_leaves_the_encoder_alone():
    torch.manual_seed(0)
    steering = PolicySteering(DiffusionPolicy(TINY).eval(), AgentConfig(algo="sac", encoder="cnn", hidden_dim=32))
    agent = steering.agent
    obs = {"image": torch.randint(0, 256, (4, 84, 84, 3), dtype=torch.uint8), "proprio": torch.randn(4, 11)}
    features = agent.encode(obs).detach()
    before = {k: v.clone() for k, v in agent.encoder.state_dict().items()}
    won_rows = {"won": torch.ones(4), "noise": torch.randn(4, agent.config.noise_dim)}   # winner_regression too
    metrics = agent._update_actor_and_temperature(features, won_rows)
    assert metrics["winner_regression_loss"] > 0
    for k, v in agent.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_train_steer_with_the_scripted_operator_stores_its_takeovers_and_reports_them(tiny_policy_dir, tmp_path,
                                                                                       capsys):
    from dsrl_ros.core.episode_store import EpisodeStore

    out = tmp_path / "r"
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--out", str(out), "--episodes", "3",
                     "--warmup-episodes", "1", "--utd", "1", "--batch-size", "8", "--hidden-dim", "32",
                     "--eval-episodes", "0", "--threads", "1", "--operator", "scripted",
                     "--set", "teleop.scripted_threshold=0.05", "--set", "teleop.scripted_episodes=2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    data, _ = EpisodeStore.open(out / "replay.zarr").load_all()
    operator_steps = sum(bin(int(mask)).count("1") for mask in data["intervention"])
    assert summary["intervention_steps"] == operator_steps == sum(r["operator_steps"] for r in records) > 0
    assert summary["interventions"] == 2 and records[2]["operator_steps"] == 0     # the first two episodes only
    rows = data["intervention"] != 0
    assert (data["source"][rows] == SOURCE_EXTERNAL).all() and not data["noise"][rows].any()


@pytest.mark.parametrize("algo", ["na", "sac"])
def test_noise_segments_steer_one_vector_per_segment_held_over_its_steps(tiny_policy_dir, tmp_path, algo):
    """learner.noise_segments=2 on a 4-step chunk: the agent chooses 2 x 5 numbers, the policy gets each held for
    two steps; replay noise (any w) reaches the critic as segment means; the YAML knob reaches a saved actor."""
    assert cli_main(["train-steer", "--policy", str(tiny_policy_dir), "--out", str(tmp_path / "r"), "--episodes",
                     "3", "--warmup-episodes", "1", "--utd", "1", "--batch-size", "4", "--hidden-dim", "32",
                     "--eval-episodes", "0", "--algo", algo, "--set", "learner.noise_segments=2"]) == 0
    policy = DiffusionPolicy(TINY).eval()
    steering = load_actor(tmp_path / "r" / "actor", policy)
    assert steering.config.noise_segments == 2
    assert (steering.agent.config.noise_dim, steering.agent.config.action_dim) == (10, 20)
    assert steering.agent.actor.trunk[-1].out_features == 2 * 10
    w = steering.choose_noise(ScriptedEnv().reset()[0])
    assert w.shape == TINY.noise_shape
    np.testing.assert_array_equal(w[0], w[1])
    np.testing.assert_array_equal(w[2], w[3])
    assert not np.array_equal(w[0], w[2])
    z = torch.randn(3, 10)
    assert torch.equal(steering.project(steering.expand(z)), z)
    full = torch.arange(20.0)[None]                        # steps (0..4, 5..9), (10..14, 15..19)
    assert steering.project(full).tolist() == [[2.5, 3.5, 4.5, 5.5, 6.5, 12.5, 13.5, 14.5, 15.5, 16.5]]


def test_noise_segments_must_divide_the_chunk():
    with pytest.raises(ValueError, match=r"learner.noise_segments: expected 0 or a divisor of the policy's chunk "
                                         r"length 4, got 3"):
        PolicySteering(DiffusionPolicy(TINY).eval(), AgentConfig(noise_segments=3))
    with pytest.raises(ValueError, match="noise_segments: expected an integer >= 0"):
        AgentConfig(noise_segments=-1)
