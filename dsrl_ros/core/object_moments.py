"""The `object_moments` encoder: where the object is and which way it points, read from the camera image by its
colour, plus the normalised proprio — a few numbers an actor can learn from in 150 episodes.

Why: on `lift_block` the grasp the block needs is set by its yaw, and the frozen base features carry it among 256
directions that 150 episodes do not find (docs/results.md). A lab that knows its object's colour can read the
object's image position and long axis with no training at all, the low-dimensional object state DSRL's sim
results were obtained with, taken from pixels. Parameter-free: nothing here is learned or saved but the knobs.

obs {"image": (B, H, W, 3) uint8, "proprio": (B, P) float32} -> (B, moment_features(H) + P) float32:
  visible     1 if at least MIN_PIXELS pixels match the colour, else 0 (then the other five are 0)
  size        sqrt(matching pixels / (H W)) * 4: ~0.6 for the block at the table's centre in an 84 px image
  cx, cy      the matching pixels' centroid, -1 (left / top) ... +1 (right / bottom)
  e_cos, e_sin  the long axis in the image: (mu20 - mu02, 2 mu11) / (mu20 + mu02) = e (cos 2 theta, sin 2 theta),
              e in [0, 1] its elongation (0 round, 1 a line): no jump where theta wraps, 0 when nothing is seen
  with axis_harmonics H > 1, then e (cos 2k theta, sin 2k theta) for k = 2..H: a grasp that switches at some
              angle is a step in theta, which harmonics let a linear rule follow more closely
              (bench/first_noise_regression.py; a DSRL actor on lift_block did worse with them, docs/results.md);
              continuous like the first, 0 when nothing is seen
A pixel matches when its chromaticity rgb / (r + g + b) lies within `tolerance` (Euclidean) of the colour's and it
is not near-black (r + g + b >= MIN_BRIGHTNESS): shading changes brightness, not chromaticity.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_PIXELS = 3
MIN_BRIGHTNESS = 60.0     # r + g + b of 0..255 values: darker pixels have no reliable hue


def moment_names(axis_harmonics: int) -> list[str]:
    """The names of ObjectMomentsEncoder.moments' columns, in order: e_cos_4, e_sin_4 for the 4 theta harmonic..."""
    return ["visible", "size", "cx", "cy", "e_cos", "e_sin"] + [
        f"e_{f}_{2 * k}" for k in range(2, axis_harmonics + 1) for f in ("cos", "sin")]


def moment_features(axis_harmonics: int) -> int:
    """How many numbers ObjectMomentsEncoder.moments gives: visible, size, cx, cy and two per harmonic."""
    return len(moment_names(axis_harmonics))


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#rrggbb' (checked by AgentConfig) -> (r, g, b) in 0..255."""
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def object_mask(image: torch.Tensor, chroma: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, H, W) bool: the pixels whose chromaticity is within tolerance of chroma (3,)."""
    pixels = image.float()
    brightness = pixels.sum(-1)
    near = (pixels / brightness.clamp(min=1.0).unsqueeze(-1) - chroma).norm(dim=-1) <= tolerance
    return near & (brightness >= MIN_BRIGHTNESS)


class ObjectMomentsEncoder(nn.Module):
    """Colour mask -> image moments of the object, concatenated with the proprio on the base policy's scale."""

    def __init__(self, colour: str, tolerance: float, proprio_norm: nn.Module | None, axis_harmonics: int = 1):
        super().__init__()
        rgb = torch.tensor(parse_colour(colour), dtype=torch.float32)
        if rgb.sum() < MIN_BRIGHTNESS:
            raise ValueError(f"object_colour: expected a colour brighter than r + g + b = {MIN_BRIGHTNESS:.0f} "
                             f"(its hue must be readable), got {colour!r}")
        self.register_buffer("chroma", rgb / rgb.sum(), persistent=False)
        self.tolerance = float(tolerance)
        self.axis_harmonics = int(axis_harmonics)
        self.n_moments = moment_features(self.axis_harmonics)
        self.proprio_norm = proprio_norm

    def moments(self, image: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, self.n_moments) float32 (the module docstring's numbers)."""
        mask = object_mask(image, self.chroma, self.tolerance).float()
        h, w = mask.shape[1:]
        ys = torch.linspace(-1.0, 1.0, h, device=image.device).view(1, h, 1)
        xs = torch.linspace(-1.0, 1.0, w, device=image.device).view(1, 1, w)
        count = mask.sum((1, 2))                                               # (B,)
        visible = (count >= MIN_PIXELS).float()
        n = count.clamp(min=1.0)
        cx, cy = (mask * xs).sum((1, 2)) / n, (mask * ys).sum((1, 2)) / n
        dx, dy = xs - cx.view(-1, 1, 1), ys - cy.view(-1, 1, 1)
        mu20, mu02, mu11 = ((mask * dx * dx).sum((1, 2)) / n, (mask * dy * dy).sum((1, 2)) / n,
                            (mask * dx * dy).sum((1, 2)) / n)
        spread = (mu20 + mu02).clamp(min=1e-12)
        size = (count / (h * w)).sqrt() * 4.0
        e_cos, e_sin = (mu20 - mu02) / spread, 2.0 * mu11 / spread
        columns = [visible, size, cx, cy, e_cos, e_sin]
        if self.axis_harmonics > 1:
            elongation, double_angle = torch.hypot(e_cos, e_sin), torch.atan2(e_sin, e_cos)
            for k in range(2, self.axis_harmonics + 1):
                columns += [elongation * torch.cos(k * double_angle), elongation * torch.sin(k * double_angle)]
        return torch.stack(columns, dim=-1) * visible.unsqueeze(-1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.moments(obs["image"]), self.proprio_norm.normalize(obs["proprio"])], dim=-1)
