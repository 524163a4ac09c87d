"""The networks of a LeRobot DiffusionPolicy, written for this stack (no lerobot, torchvision or diffusers import).

Module and parameter names follow LeRobot's state dict (`diffusion.rgb_encoder.*`, `diffusion.unet.*`) so its
`model.safetensors` loads with strict=True; the forward passes are our own. Architecture (Chi et al.'s Diffusion
Policy as LeRobot 0.4 builds it):

- RGB encoder: optional resize (bilinear, antialiased) -> centre crop (eval) -> torchvision-layout ResNet up to
  layer4 (BatchNorm, or GroupNorm with C/16 groups) -> spatial softmax over K keypoints from a 1x1 conv
  (expected x, y on a [-1, 1] grid) -> Linear(2K, 2K) -> ReLU.
- 1-D conditional UNet over the chunk (B, Ta, Da) -> (B, Ta, Da): residual blocks (Conv1d -> GroupNorm -> Mish,
  twice) FiLM-modulated by Linear(Mish([time embedding, global cond])), strided conv down / transposed conv up,
  skip connections, final conv block + 1x1 conv.

The fast path: everything that depends only on (observation, timestep) — the time embedding and every block's
FiLM scale/bias — is computed for all denoising steps in one batched pass before the loop (`film_tables`), so
each step is only the convolutions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---- image encoder ---------------------------------------------------------------------------------------------
def _norm2d(channels: int, group_norm: bool) -> nn.Module:
    return nn.GroupNorm(channels // 16, channels) if group_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(planes, group_norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(planes, group_norm)
        self.downsample = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False),
                                            _norm2d(planes, group_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, group_norm: bool):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = _norm2d(planes, group_norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm2d(planes, group_norm)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _norm2d(out, group_norm)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), _norm2d(out, group_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3)), "resnet101": (Bottleneck, (3, 4, 23, 3)),
           "resnet152": (Bottleneck, (3, 8, 36, 3))}


def resnet_trunk(name: str, group_norm: bool) -> tuple[nn.Sequential, int]:
    """torchvision's ResNet children up to layer4 (indices 0..7, as LeRobot keeps them); returns (trunk, C out)."""
    if name not in RESNETS:
        raise ValueError(f"vision_backbone: expected one of {sorted(RESNETS)}, got {name!r}")
    block, depths = RESNETS[name]
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), _norm2d(64, group_norm), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    c_in = 64
    for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
        blocks = []
        for j in range(depth):
            blocks.append(block(c_in, planes, 2 if (j == 0 and i > 0) else 1, group_norm))
            c_in = planes * block.expansion
        layers.append(nn.Sequential(*blocks))
    return nn.Sequential(*layers), c_in


def resnet_output_hw(h: int, w: int) -> tuple[int, int]:
    """Spatial size after conv1 (stride 2), maxpool (stride 2) and three stride-2 stages."""
    def down(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1
    h, w = down(h, 7, 2, 3), down(w, 7, 2, 3)
    h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    for _ in range(3):
        h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    return h, w


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) -> (N, K, 2): softmax over positions of K keypoint maps, expected (x, y) on a [-1, 1] grid."""

    def __init__(self, channels: int, h: int, w: int, num_kp: int):
        super().__init__()
        self.nets = nn.Conv2d(channels, num_kp, 1)
        self.num_kp = num_kp
        # numpy's linspace (float64, then float32) as LeRobot builds the grid; the buffer is in the state dict too.
        xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.nets(features).flatten(2)                       # (N, K, h*w)
        return (torch.softmax(logits, dim=-1) @ self.pos_grid).view(-1, self.num_kp, 2)


class RgbEncoder(nn.Module):
    """(N, 3, H, W) float image, already normalised -> (N, 2K) features (eval-mode preprocessing: centre crop)."""

    def __init__(self, backbone: str, group_norm: bool, image_hw: tuple[int, int],
                 resize: tuple[int, int] | None, crop: tuple[int, int] | None, num_kp: int):
        super().__init__()
        self.resize, self.crop = resize, crop
        self.backbone, channels = resnet_trunk(backbone, group_norm)
        hw = crop or resize or image_hw
        self.pool = SpatialSoftmax(channels, *resnet_output_hw(*hw), num_kp)
        self.feature_dim = 2 * num_kp
        self.out = nn.Linear(2 * num_kp, 2 * num_kp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False, antialias=True)
        if self.crop is not None:
            x = center_crop(x, self.crop)
        return F.relu(self.out(self.pool(self.backbone(x)).flatten(1)))


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's centre crop: offsets round((H - h) / 2) (Python rounding); zero-pads an image too small."""
    h, w = x.shape[-2:]
    ch, cw = size
    if ch > h or cw > w:
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        h, w = x.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top:top + ch, left:left + cw]


# ---- conditional 1-D UNet --------------------------------------------------------------------------------------
class Conv1dBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out),
                                   nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm = self.block[0], self.block[1]
        return F.mish(F.group_norm(conv(x), norm.num_groups, norm.weight, norm.bias, norm.eps))


class ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int, film_scale: bool):
        super().__init__()
        self.c_out, self.film_scale = c_out, film_scale
        self.conv1 = Conv1dBlock(c_in, c_out, kernel, groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out if film_scale else c_out))
        self.conv2 = Conv1dBlock(c_out, c_out, kernel, groups)
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """film: this block's cond_encoder output (B, C or 2C), precomputed (see `film_tables`)."""
        out = self.conv1(x)
        if self.film_scale:
            out = torch.addcmul(film[:, self.c_out:, None], film[:, :self.c_out, None], out)
        else:
            out = out + film[:, :, None]
        return self.conv2(out) + self.residual_conv(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """LeRobot's DiffusionSinusoidalPosEmb: [sin, cos] with frequencies exp(-i log(1e4) / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class ConditionalUnet1d(nn.Module):
    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...], kernel: int,
                 groups: int, step_embed_dim: int, film_scale: bool):
        super().__init__()
        self.step_embed_dim = step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            nn.Identity(),   # index 0 is the parameter-free sinusoidal embedding in LeRobot's Sequential
            nn.Linear(step_embed_dim, step_embed_dim * 4), nn.Mish(), nn.Linear(step_embed_dim * 4, step_embed_dim))
        cond_dim = step_embed_dim + global_cond_dim
        in_out = [(action_dim, down_dims[0])] + list(zip(down_dims[:-1], down_dims[1:]))
        kw = dict(cond_dim=cond_dim, kernel=kernel, groups=groups, film_scale=film_scale)
        self.down_modules = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                ResBlock1d(c_in, c_out, **kw), ResBlock1d(c_out, c_out, **kw),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid_modules = nn.ModuleList([ResBlock1d(down_dims[-1], down_dims[-1], **kw) for _ in range(2)])
        self.up_modules = nn.ModuleList()
        # LeRobot's `is_last` test never holds for the decoder: every up stage upsamples.
        for c_out, c_in in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([
                ResBlock1d(c_in * 2, c_out, **kw), ResBlock1d(c_out, c_out, **kw),
                nn.ConvTranspose1d(c_out, c_out, 4, 2, 1)]))
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel, 8),
                                        nn.Conv1d(down_dims[0], action_dim, 1))

    def res_blocks(self) -> list[ResBlock1d]:
        blocks = [b for stage in self.down_modules for b in stage[:2]] + list(self.mid_modules)
        return blocks + [b for stage in self.up_modules for b in stage[:2]]

    def film_tables(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> list[torch.Tensor]:
        """Every block's FiLM output for every (timestep, sample): timesteps (S,), global_cond (B, G) ->
        per block (S, B, C or 2C). Linear(Mish([t_emb, g])) = W_t Mish(t_emb) + W_g Mish(g) + b: the timestep
        part is computed once per step, the observation part once per chunk."""
        enc = self.diffusion_step_encoder
        t_emb = sinusoidal_embedding(timesteps, self.step_embed_dim).to(enc[1].weight.dtype)
        t_emb = enc[3](F.mish(enc[1](t_emb)))                                                  # (S, E)
        t_act, g_act = F.mish(t_emb), F.mish(global_cond)
        e = self.step_embed_dim
        tables = []
        for block in self.res_blocks():
            lin = block.cond_encoder[1]
            time_part = torch.addmm(lin.bias, t_act, lin.weight[:, :e].T)                            # (S, C')
            obs_part = g_act @ lin.weight[:, e:].T                                                  # (B, C')
            tables.append(time_part[:, None, :] + obs_part[None])
        return tables

    def forward(self, x: torch.Tensor, films: list[torch.Tensor]) -> torch.Tensor:
        """x (B, Ta, Da); films: one (B, C') per res block (a row of `film_tables`) -> (B, Ta, Da)."""
        x = x.transpose(1, 2)
        it = iter(films)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, next(it)), next(it))
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, next(it))
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, next(it)), next(it)))
        return self.final_conv(x).transpose(1, 2)
