"""DSRL: SAC over the diffusion policy's latent noise (Wagenmaker et al. 2025), readable top to bottom.

The RL action is the initial noise w (Ta*Da,) the frozen policy denoises into an action chunk a = pi_dp(s, w).
One chunk is one RL step: r = reward summed over the executed chunk, gamma applied once per chunk, success ends
are terminal, time-limit ends bootstrap.

  DSRL-SAC: critic Q(s, w).
     Q(s, w)   <- r + gamma (1 - d) [min_i Qtarg_i(s', w') - alpha log pi(w'|s')],   w' ~ pi(s')
  DSRL-NA (noise-aliased): critic on executed actions, distilled into a noise critic.
     Q^A(s, a) <- r + gamma (1 - d) [min_i Q^A_targ_i(s', pi_dp(s', w')) - alpha log pi(w'|s')],  w' ~ pi(s')
     Q^W_i(s, w) <- Q^A_i(s, pi_dp(s, w)) for w ~ N(0, I) clipped to +-b, and w ~ pi(s)   (per critic index)
     Transitions whose chunk was not chosen by the actor (warm-up with w ~ N(0, I), human interventions) are
     valid for Q^A: it only needs the executed a.
  Actor (both): minimise alpha log pi(w|s) - min_i Q(s, w),   w = b tanh(u),  u ~ N(mu(s), sigma(s)).
     The actor starts at mu = 0, log sigma = init_log_std for every state: with sigma = 1 and b ~ 1.5, w has
     about the base policy's N(0, I) spread, so the untrained actor behaves like the base policy.
     With winner_regression = lambda > 0 the actor also regresses its mean noise onto the noises of successful
     episodes (rows marked `won`: episode ended in success, noise known): + lambda * mean |b tanh(mu(s)) - w|^2
     over those rows (w clipped to +-b; per noise number). A success-filtered imitation of its own winners that
     needs no critic to rank noises (bench/first_noise_regression.py: averaging the winners' first noises beats
     the reparameterised actor at 150 episodes).
  Temperature: minimise -log_alpha * (log pi_tanh(w|s) + target_entropy), with the entropy measured on tanh(u)
     in [-1, 1] (log pi_tanh = log pi + D log b), so a target entropy means the same for every bound b.

Observations enter as feature vectors s (B, obs_dim): by default the frozen base policy's `encode_obs` output,
so the noise actor sees what the base policy sees, and an update is pure MLP work. Optionally an encoder of the
agent's own (raw obs -> s) is trained through the TD critic's loss only; actor, Q^W and temperature see its
output detached (as in DrQ). The base policy's decoder always gets the base policy's features (`base_obs`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dsrl_ros.core.agent_config import ALGOS, check_fields

# decode(s (B, obs_dim), w (B, noise_dim)) -> executed chunk a (B, action_dim), normalised, no grad:
# the frozen base policy as a black box. Only DSRL-NA calls it.
Decoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DSRLConfig:
    obs_dim: int
    noise_dim: int                       # Ta * Da
    action_dim: int                      # executed chunk, flattened (NA's critic input)
    algo: str = "na"
    hidden_dim: int = 256
    num_layers: int = 3
    num_critics: int = 2
    noise_magnitude: float = 1.5         # b: w = b * tanh(u), both variants
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    actor_lr: float | None = None        # None: same as lr
    batch_size: int = 256
    init_temperature: float = 1.0
    target_entropy: float = 0.0          # per chunk, on tanh(u) (see above)
    init_log_std: float = 0.0            # the untrained actor's log sigma of u
    distill_noise_fraction: float = 0.5  # NA: share of Q^W samples from N(0, I) (rest from the actor)
    distill_steps: int = 1               # NA: Q^W regression steps (fresh noise each) per update
    winner_regression: float = 0.0       # lambda: the actor's mean regressed onto successful episodes' noises

    def __post_init__(self) -> None:
        counts = ("obs_dim", "noise_dim", "action_dim", "hidden_dim", "num_layers", "batch_size", "distill_steps")
        check_fields(self, [("algo", self.algo in ALGOS, f"one of {ALGOS}")]
                     + [(name, int(getattr(self, name)) >= 1, "a positive integer") for name in counts]
                     + [("num_critics", self.num_critics >= 2, ">= 2 (min over an ensemble)"),
                        ("noise_magnitude", self.noise_magnitude > 0, "> 0"),   # NaN fails every comparison
                        ("actor_lr", self.actor_lr is None or self.actor_lr > 0, "> 0 or null (same as lr)"),
                        ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"), ("tau", 0 < self.tau <= 1, "in (0, 1]"),
                        ("lr", self.lr > 0, "> 0"), ("init_temperature", self.init_temperature > 0, "> 0"),
                        ("distill_noise_fraction", 0 <= self.distill_noise_fraction <= 1, "in [0, 1]"),
                        ("winner_regression", self.winner_regression >= 0, ">= 0 (0: off)")])


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> Tanh hidden layers (the DSRL paper's critic/actor trunk)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.Tanh()]
    mods.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*mods)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: x (E, B, in) -> (E, B, out)."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """E critics Q_i(s, x) fused into batched matmuls (one launch per layer for all critics): -> (E, B)."""

    def __init__(self, ensemble: int, in_dim: int, hidden: int, layers: int):
        super().__init__()
        self.ensemble = ensemble
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [EnsembleLinear(ensemble, in_dim if i == 0 else hidden, hidden),
                     nn.LayerNorm(hidden), nn.Tanh()]
        mods.append(EnsembleLinear(ensemble, hidden, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """s (B, obs) and x (B, in - obs), or both (E, B, ...) for per-critic inputs."""
        inp = torch.cat([s, x], dim=-1)
        if inp.dim() == 2:
            inp = inp.expand(self.ensemble, *inp.shape)
        return self.net(inp).squeeze(-1)


class NoiseActor(nn.Module):
    """Squashed Gaussian over noise: w = b * tanh(u), u ~ N(mu(s), sigma(s))."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, config: DSRLConfig):
        super().__init__()
        self.magnitude = config.noise_magnitude
        self.trunk = mlp(config.obs_dim, config.hidden_dim, config.num_layers, 2 * config.noise_dim)
        if not self.LOG_STD_MIN < config.init_log_std < self.LOG_STD_MAX:
            raise ValueError(f"init_log_std: expected {self.LOG_STD_MIN}..{self.LOG_STD_MAX}, got "
                             f"{config.init_log_std}")
        # Start every state at mu = 0, log sigma = init_log_std: the output layer's weights near zero, its bias
        # the pre-squash value of init_log_std.
        last = self.trunk[-1]
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.zero_()
            unit = (config.init_log_std - self.LOG_STD_MIN) / (0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN)) - 1
            last.bias[config.noise_dim:] = math.atanh(unit)

    def gaussian(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) of the pre-squash Gaussian over u, log sigma squashed into [LOG_STD_MIN, LOG_STD_MAX]."""
        mu, log_std = self.trunk(s).chunk(2, dim=-1)
        return mu, self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1)

    def forward(self, s: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (w (B, noise_dim), log pi(w|s) (B,)), reparameterised."""
        return self.sample(*self.gaussian(s), deterministic)

    def sample(self, mu: torch.Tensor, log_std: torch.Tensor,
               deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, log pi(w|s)) from the Gaussian `gaussian` gave (callers that also need mu run the trunk once)."""
        u = mu if deterministic else mu + log_std.exp() * torch.randn_like(mu)
        # log N(u; mu, std) - log |dw/du|, with dw/du = b (1 - tanh(u)^2) computed stably.
        log_prob = (-0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - F.softplus(-2 * u)) + math.log(self.magnitude)).sum(-1)
        return self.magnitude * torch.tanh(u), log_prob


class DSRL(nn.Module):
    """Actor, critics (Q^W; plus Q^A for NA), their Polyak targets and the learned temperature."""

    def __init__(self, config: DSRLConfig, decode: Decoder | None = None, encoder: nn.Module | None = None):
        super().__init__()
        if config.algo == "na" and decode is None:
            raise ValueError("decode: DSRL-NA needs the base policy's decoder pi_dp(s, w)")
        self.config, self.decode = config, decode
        c = config
        self.encoder = encoder
        self.actor = NoiseActor(c)
        self.q_noise = CriticEnsemble(c.num_critics, c.obs_dim + c.noise_dim, c.hidden_dim, c.num_layers)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(c.init_temperature)))
        critics = [self.q_noise]
        if c.algo == "na":
            self.q_action = CriticEnsemble(c.num_critics, c.obs_dim + c.action_dim, c.hidden_dim, c.num_layers)
            critics = [self.q_action, self.q_noise]
        # TD-trained critic gets a target network: Q(s, w) for SAC, Q^A for NA (Q^W regresses, no target).
        self.q_target = copy.deepcopy(critics[0]).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr or c.lr)
        td_params = list(critics[0].parameters()) + (list(encoder.parameters()) if encoder is not None else [])
        self.critic_opts = [torch.optim.Adam(td_params, lr=c.lr)] + [torch.optim.Adam(q.parameters(), lr=c.lr)
                                                                    for q in critics[1:]]
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=c.lr)
        self.num_updates = 0

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp().detach()

    def encode(self, obs) -> torch.Tensor:
        """Features (B, obs_dim) pass through; raw observations go through the agent's own encoder."""
        return obs if self.encoder is None else self.encoder(obs)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False) -> torch.Tensor:
        """obs: features (B, obs_dim) or raw observations for the encoder -> w (B, noise_dim)."""
        if self.encoder is not None:
            self.encoder.eval()   # batch statistics are meaningless at batch 1
        w = self.actor(self.encode(obs), deterministic)[0]
        if self.encoder is not None:
            self.encoder.train()
        return w

    # ---- one gradient step on a batch of chunk-level transitions --------------------------------------------
    def update(self, batch: dict, update_actor: bool = True) -> dict[str, float]:
        """batch: obs / next_obs (B, obs_dim) features, or raw observations when the agent has an encoder;
        base_obs / base_next_obs the base policy's features for pi_dp (NA; default: obs / next_obs);
        noise (B, noise_dim); action (B, action_dim) normalised executed chunk; reward (B,) summed over the chunk;
        terminal (B,) 1.0 only on success; optional discount (B,): gamma^k of an n-step return (default gamma);
        won (B,) 1.0 on rows of successful episodes whose noise is known (needed with winner_regression > 0)."""
        b = dict(batch)
        b.setdefault("base_obs", batch["obs"])
        b.setdefault("base_next_obs", batch["next_obs"])
        b["obs"] = self.encode(batch["obs"])                 # with an encoder: trained by the TD loss below
        with torch.no_grad():
            b["next_obs"] = self.encode(batch["next_obs"])
        metrics = self._update_na_critics(b) if self.config.algo == "na" else self._update_sac_critic(b)
        if update_actor:
            metrics |= self._update_actor_and_temperature(b["obs"].detach(), b)
        with torch.no_grad():  # Polyak average of the TD critic
            online = self.q_action if self.config.algo == "na" else self.q_noise
            for p_t, p in zip(self.q_target.parameters(), online.parameters()):
                p_t.lerp_(p, self.config.tau)
        self.num_updates += 1
        return metrics

    def _td_target(self, b: dict[str, torch.Tensor], next_value: torch.Tensor) -> torch.Tensor:
        discount = b.get("discount", self.config.gamma)
        return b["reward"] + discount * (1.0 - b["terminal"]) * next_value

    def _tanh_space(self, logp: torch.Tensor) -> torch.Tensor:
        """log pi(w|s) -> the log density of tanh(u) = w / b (the space the target entropy is measured in)."""
        return logp + self.config.noise_dim * math.log(self.config.noise_magnitude)

    def _update_sac_critic(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            w_next, logp_next = self.actor(b["next_obs"])
            q_next = self.q_target(b["next_obs"], w_next).min(0).values - self.alpha * logp_next
            target = self._td_target(b, q_next)
        q = self.q_noise(b["obs"], b["noise"])
        loss = F.mse_loss(q, target.expand_as(q))
        self._step(self.critic_opts[0], loss)
        return {"critic_loss": float(loss.detach()), "q_mean": float(q.detach().mean())}

    def _update_na_critics(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.config
        with torch.no_grad():
            w_next, logp_next = self.actor(b["next_obs"])
            a_next = self.decode(b["base_next_obs"], w_next)
            q_next = self.q_target(b["next_obs"], a_next).min(0).values - self.alpha * logp_next
            target = self._td_target(b, q_next)
        q_a = self.q_action(b["obs"], b["action"])
        loss_a = F.mse_loss(q_a, target.expand_as(q_a))
        self._step(self.critic_opts[0], loss_a)

        # Distil: Q^W_i(s, w) regresses Q^A_i(s, pi_dp(s, w)) on noise the actor may produce.
        obs = b["obs"].detach()
        n_gauss = round(c.distill_noise_fraction * obs.shape[0])
        for _ in range(c.distill_steps):
            with torch.no_grad():
                w_gauss = torch.randn(n_gauss, c.noise_dim, device=obs.device).clamp(-c.noise_magnitude,
                                                                                      c.noise_magnitude)
                w_actor, _ = self.actor(obs[n_gauss:])
                w = torch.cat([w_gauss, w_actor])
                q_a_of_w = self.q_action(obs, self.decode(b["base_obs"], w))
            q_w = self.q_noise(obs, w)
            loss_w = F.mse_loss(q_w, q_a_of_w)
            self._step(self.critic_opts[1], loss_w)
        return {"critic_loss": float(loss_a.detach()), "distill_loss": float(loss_w.detach()),
                "q_mean": float(q_a.detach().mean())}

    def _update_actor_and_temperature(self, obs: torch.Tensor, b: dict | None = None) -> dict[str, float]:
        mu, log_std = self.actor.gaussian(obs)
        w, logp = self.actor.sample(mu, log_std)
        q = self.q_noise(obs, w).min(0).values
        actor_loss = (self.alpha * logp - q).mean()
        metrics = {}
        if self.config.winner_regression > 0:
            regression = self._winner_regression(mu, b)
            actor_loss = actor_loss + self.config.winner_regression * regression
            metrics["winner_regression_loss"] = float(regression.detach())
        self._step(self.actor_opt, actor_loss)
        logp_tanh = self._tanh_space(logp.detach())
        alpha_loss = -(self.log_alpha * (logp_tanh + self.config.target_entropy)).mean()
        self._step(self.alpha_opt, alpha_loss)
        w_abs = (w.detach().abs() / self.config.noise_magnitude)
        return metrics | {"actor_loss": float(actor_loss.detach()), "alpha": float(self.alpha),
                          "entropy": float(-logp_tanh.mean()), "saturated": float((w_abs > 0.9).float().mean())}

    def _winner_regression(self, mu: torch.Tensor, b: dict | None) -> torch.Tensor:
        """Mean over the batch's won rows of the squared distance (per noise number) between the actor's
        deterministic noise b tanh(mu) (mu: its pre-squash mean on the batch) and the noise the row executed; 0
        with no won row in the batch."""
        if b is None or "won" not in b:
            raise ValueError("winner_regression: the batch needs 'won' (B,): 1.0 on rows of successful episodes "
                             "whose noise is known (ChunkReplay.sample adds it)")
        won = b["won"].to(mu.dtype)
        bound = self.config.noise_magnitude
        mean_noise = bound * torch.tanh(mu)
        err = (mean_noise - b["noise"].clamp(-bound, bound)).pow(2).mean(-1)
        return (err * won).sum() / won.sum().clamp(min=1.0)

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
