"""DSRL core on a toy problem where the optimal noise is known.

Base "policy": a = tanh(w . v) with a fixed v (a black box the agents may only call). Reward peaks at a* = 0.5,
one-step episodes (terminal). The actor must learn noise whose decoded action is a*, for both variants.
"""

import pytest
import torch

from dsrl_ros.core.dsrl import DSRL, DSRLConfig

V = torch.tensor([[0.6], [0.3]])
A_STAR = 0.5


def decode(_s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w @ V)


def reward(a: torch.Tensor) -> torch.Tensor:
    return torch.exp(-((a.squeeze(-1) - A_STAR) / 0.2) ** 2)


def make_agent(algo: str, seed: int = 0) -> DSRL:
    torch.manual_seed(seed)
    cfg = DSRLConfig(obs_dim=2, noise_dim=2, action_dim=1, algo=algo, hidden_dim=64, num_layers=2,
                     batch_size=128, lr=1e-3, noise_magnitude=2.0, target_entropy=-4.0, init_temperature=0.05)
    return DSRL(cfg, decode)


def train_toy(agent: DSRL, iterations: int) -> None:
    keys = ("obs", "noise", "action", "reward", "next_obs", "terminal")
    store = {k: [] for k in keys}
    for it in range(iterations):
        s = torch.randn(16, 2)
        w = agent.act(s) if it >= 50 else torch.randn(16, 2).clamp(-2, 2)  # warm-up: base noise
        a = decode(s, w)
        for k, v in zip(keys, (s, w, a, reward(a), torch.randn(16, 2), torch.ones(16))):
            store[k].append(v)
        data = {k: torch.cat(v) for k, v in store.items()}
        idx = torch.randint(0, data["obs"].shape[0], (128,))
        agent.update({k: v[idx] for k, v in data.items()})


@pytest.mark.parametrize("seed", [0, 1, 2])         # a property of the algorithm, not of one seed
@pytest.mark.parametrize("algo", ["na", "sac"])
def test_actor_converges_to_the_known_optimal_noise(algo, seed):
    agent = make_agent(algo, seed)
    train_toy(agent, 800)
    s = torch.randn(512, 2)
    a = decode(s, agent.act(s, deterministic=True))
    assert abs(float(a.mean()) - A_STAR) < 0.05, float(a.mean())
    assert float(reward(a).mean()) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_critic_tracks_action_critic_on_sampled_noise(seed):
    agent = make_agent("na", seed)
    train_toy(agent, 600)
    s, w = torch.randn(512, 2), torch.randn(512, 2).clamp(-2, 2)
    with torch.no_grad():
        q_a = agent.q_action(s, decode(s, w))
        q_w = agent.q_noise(s, w)
    assert float((q_w - q_a).abs().mean()) < 0.05
    assert float(torch.corrcoef(torch.stack([q_w[0], q_a[0]]))[0, 1]) > 0.95


def test_the_noise_magnitude_is_the_bound_of_w_and_log_prob_stays_finite_at_it():
    agent = make_agent("na")                               # noise_magnitude 2.0
    with torch.no_grad():
        agent.actor.trunk[-1].bias[:2].fill_(50.0)           # push the mean of u far out: w saturates
        w, logp = agent.actor(torch.randn(1000, 2))
    assert float(w.abs().max()) <= 2.0 and float(w.abs().max()) > 1.99   # the bound is b, reached, not passed
    assert torch.isfinite(logp).all()


def test_log_prob_matches_torch_transformed_distribution():
    from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

    torch.manual_seed(0)
    cfg = DSRLConfig(obs_dim=3, noise_dim=4, action_dim=1, algo="sac", noise_magnitude=1.5)
    actor = DSRL(cfg).actor
    s = torch.randn(64, 3)
    with torch.no_grad():
        w, logp = actor(s)
        mu, log_std = actor.gaussian(s)
        dist = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform(), AffineTransform(0.0, 1.5)])
        expected = dist.log_prob(w.clamp(-1.5 + 1e-6, 1.5 - 1e-6)).sum(-1)
    assert torch.allclose(logp, expected, atol=1e-3)


def test_td_target_bootstraps_only_when_not_terminal_with_gamma_or_the_batch_discount():
    agent = make_agent("sac")
    batch = {"reward": torch.tensor([1.0, 1.0]), "terminal": torch.tensor([1.0, 0.0])}
    target = agent._td_target(batch, torch.tensor([10.0, 10.0]))
    assert target.tolist() == pytest.approx([1.0, 1.0 + agent.config.gamma * 10.0])
    n_step = agent._td_target(batch | {"discount": torch.tensor([0.5, 0.25])}, torch.tensor([10.0, 10.0]))
    assert n_step.tolist() == pytest.approx([1.0, 1.0 + 0.25 * 10.0])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="algo"):
        DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, algo="ppo")
    with pytest.raises(ValueError, match="noise_magnitude"):
        DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, noise_magnitude=0)
    with pytest.raises(ValueError, match="decode"):
        DSRL(DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, algo="na"))
    with pytest.raises(ValueError, match=r"gamma: expected in \[0, 1\], got 1.5"):
        DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, gamma=1.5)
    with pytest.raises(ValueError, match=r"tau: expected in \(0, 1\], got nan"):   # NaN fails every comparison
        DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, tau=float("nan"))
    with pytest.raises(ValueError, match=r"actor_lr: expected > 0 or null"):
        DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, actor_lr=-1e-4)
    DSRLConfig(obs_dim=1, noise_dim=1, action_dim=1, gamma=1.0, tau=1.0, actor_lr=None)   # the edges are allowed


@pytest.mark.parametrize("algo", ["na", "sac"])
def test_winner_regression_pulls_the_actor_to_the_noises_of_won_rows_only(algo):
    """A flat reward (the critics rank nothing): with winner_regression the deterministic actor moves to the noise
    of the won rows, state by state, and ignores the noise of rows that did not win; without it, it stays put."""
    def train(weight):
        torch.manual_seed(0)
        cfg = DSRLConfig(obs_dim=2, noise_dim=2, action_dim=1, algo=algo, hidden_dim=32, num_layers=2, lr=1e-3,
                         noise_magnitude=2.0, winner_regression=weight)
        agent = DSRL(cfg, decode)
        for _ in range(400):
            s = torch.randn(128, 2)
            won = (torch.rand(128) < 0.5).float()
            winner_noise = torch.stack([torch.sign(s[:, 0]), -0.5 * torch.ones(128)], -1)   # depends on the state
            noise = torch.where(won[:, None] > 0, winner_noise, torch.full((128, 2), -1.5))
            agent.update({"obs": s, "next_obs": s, "noise": noise, "action": decode(s, noise),
                          "reward": torch.zeros(128), "terminal": torch.ones(128), "won": won})
        s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
        return agent.act(s, deterministic=True)

    pulled = train(5.0)
    assert torch.allclose(pulled, torch.tensor([[1.0, -0.5], [-1.0, -0.5]]), atol=0.15), pulled
    assert train(0.0).abs().max() < 0.3          # off: nothing pulls the mean from 0 (flat Q)


def test_winner_regression_needs_the_won_column():
    agent = DSRL(DSRLConfig(obs_dim=2, noise_dim=2, action_dim=1, algo="sac", winner_regression=1.0))
    batch = {"obs": torch.zeros(4, 2), "next_obs": torch.zeros(4, 2), "noise": torch.zeros(4, 2),
             "action": torch.zeros(4, 1), "reward": torch.zeros(4), "terminal": torch.ones(4)}
    with pytest.raises(ValueError, match="winner_regression: the batch needs 'won'"):
        agent.update(batch)
