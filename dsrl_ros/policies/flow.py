"""Flow-matching base policy (pi0-style): the same observation encoder and FiLM-MLP network as the diffusion
policy, trained to predict a velocity instead of a noise, sampled by Euler or midpoint steps from x_1 = w.

Path (rectified flow, as pi0):  x_t = (1 - t) x_0 + t eps,  target velocity u = eps - x_0,  t ~ U(0, 1).
Sampling integrates dx/dt = v(x_t, t) from t = 1 (x_1 = w, never clipped) down to t = 0 in `num_inference_steps`
equal steps; the result is clamped to the normalised action range [-1, 1]. No randomness besides w: the same
(obs, w) gives the same chunk, bit for bit on CPU.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from dsrl_ros.core.policy import DiffusionPolicy, PolicyConfig

SOLVERS = ("euler", "midpoint")
# The network's time embedding was built for integer diffusion timesteps 0..T-1; flow time t in [0, 1] is
# scaled to the same range so the sinusoid frequencies resolve it.
TIME_SCALE = 100.0


class FlowMatchingPolicy(DiffusionPolicy):
    def __init__(self, config: PolicyConfig, solver: str = "euler"):
        if solver not in SOLVERS:
            raise ValueError(f"flow solver: expected one of {SOLVERS}, got {solver!r}")
        super().__init__(config)
        self.solver = solver

    def compute_loss(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Velocity MSE for a batch of (obs, action chunk (B, Ta, Da) in robot units)."""
        x0 = self.action_norm.normalize(action)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = torch.rand((x0.shape[0],), generator=generator, device=x0.device)
        x_t = x0 + t.view(-1, 1, 1) * (eps - x0)
        velocity = self.denoise(x_t, self.film_params(self.encode_obs(obs), t * TIME_SCALE))
        return F.mse_loss(velocity, eps - x0)

    def flow_times(self) -> list[float]:
        """Times the network is evaluated at, in order: Euler t_k; midpoint t_k and t_k - h/2 interleaved."""
        steps = self.config.num_inference_steps
        h = 1.0 / steps
        times = []
        for k in range(steps):
            t = 1.0 - k * h
            times += [t, t - h / 2] if self.solver == "midpoint" else [t]
        return times

    @torch.no_grad()
    def sample_from_features(self, obs_feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Integrates from x_1 = noise (B, Ta, Da) with features from `encode_obs` -> chunk, robot units."""
        times = self.flow_times()
        t_all = torch.tensor(times, device=noise.device)[:, None] * TIME_SCALE        # (S, 1)
        films = self.film_params(obs_feat, t_all)                                    # per block (S, B, 2H)

        def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
            return self.denoise(x, [f[i] for f in films])

        h = 1.0 / self.config.num_inference_steps
        x = noise
        if self.solver == "euler":
            for i in range(len(times)):
                x = torch.add(x, velocity(x, i), alpha=-h)
        else:
            for i in range(0, len(times), 2):
                x_mid = torch.add(x, velocity(x, i), alpha=-h / 2)
                x = torch.add(x, velocity(x_mid, i + 1), alpha=-h)
        return self.action_norm.unnormalize(x.clamp(-1.0, 1.0))
