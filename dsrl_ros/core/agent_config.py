"""The one description of a DSRL agent and how it is trained: every knob, with its one default.

`robot_configs/*.yaml` set these under `learner:` (the config's `LearnerSection` extends this class with where
and on what it runs); `dsrl-ros train-steer` reads the same section from the same file, so the headless recipe
and the learner node cannot disagree. No torch import: the robot config loads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

ALGOS = ("na", "sac")
REWARD_MODES = ("success", "time_penalty")
ENCODERS = ("base_features", "cnn", "whitened_features", "object_moments")
MAX_AXIS_HARMONICS = 4
# What the networks' tensors and the actor's output bound depend on: a checkpoint or an actor can be loaded only
# into an agent that agrees on these. The rest (rates, counts, reward) may change between runs of one agent.
# Knobs added after agents were saved (they change training only), with what a saved config without one meant: a
# resumed run keeps training as it was started, whatever today's default.
ADDED_LATER = {"intervention_fraction": 0.5, "takeover_penalty": 0.0, "n_step": 1, "noise_segments": 0,
               "winner_regression": 0.0, "object_colour": "#e61e19",
               "object_colour_tolerance": 0.15, "object_axis_harmonics": 1}
ARCHITECTURE = ("algo", "noise_magnitude", "noise_segments", "hidden_dim", "num_layers", "num_critics", "encoder",
                "encoder_dim", "object_colour", "object_colour_tolerance", "object_axis_harmonics")


@dataclass(frozen=True)
class AgentConfig:
    algo: str = "na"                     # na (DSRL-NA: Q^A on executed actions, distilled) | sac (DSRL-SAC: Q(s, w))
    noise_magnitude: float = 1.5         # b: the actor's w = b tanh(u)
    noise_segments: int = 0              # the steering space: 0 = all of w (one Da-vector per chunk step); S = the
                                         # chunk's Ta steps in S equal segments, one Da-vector each, held over its
                                         # steps (S * Da numbers to choose instead of Ta * Da; S divides Ta)
    hidden_dim: int = 128                # actor and critics: num_layers x hidden_dim, LayerNorm + Tanh
    num_layers: int = 3
    num_critics: int = 2                 # ensemble; targets use the min
    batch_size: int = 128
    utd: float = 5.0                     # gradient updates per recorded transition (one executed chunk)
    warmup_episodes: int = 10            # base-policy episodes (w ~ N(0, I)) before the first update
    publish_every_updates: int = 10      # a new actor version every N updates (a lagging actor hurts)
    gamma: float = 0.99                  # per chunk (one RL step)
    n_step: int = 1                      # TD targets over n chunks of the episode (rewards summed, gamma^k)
    tau: float = 0.005
    lr: float = 3e-4
    actor_lr: float = 0.0                # 0: same as lr
    distill_steps: int = 1               # NA: Q^W regression steps per update
    distill_noise_fraction: float = 0.5  # NA: share of Q^W samples from N(0, I) clipped to +-b (rest: the actor)
    winner_regression: float = 2.0       # lambda: the actor's mean noise also regressed onto the noises of
                                         # successful episodes (core/dsrl.py; 0: off; 2: docs/results.md)
    init_temperature: float = 0.01
    target_entropy: float = 0.0          # per chunk, measured on tanh(u) = w / b (core/dsrl.py)
    init_log_std: float = 0.0            # the untrained actor: u ~ N(0, e^init_log_std) in every state
    reward: str = "time_penalty"         # per chunk: "success" (env reward sum) | "time_penalty" (-1, 0 on success)
    encoder: str = "base_features"       # actor/critic input: the frozen base policy's features | "cnn" of its own |
                                         # "whitened_features": the features on their top encoder_dim principal
                                         # components at unit variance (fit on the replay when training starts)
                                         # "object_moments": the object's image position and long axis, found
                                         # by its colour, + proprio (core/object_moments.py)
    encoder_dim: int = 128               # the "cnn" encoder's feature size; the principal components kept
    object_colour: str = "#e61e19"       # "object_moments": the object's colour '#rrggbb' (the sim's red block)
    object_colour_tolerance: float = 0.15  # ... and how far (chromaticity distance) a pixel's may be from it
    object_axis_harmonics: int = 1       # ... its long axis as e (cos 2k theta, sin 2k theta) for k = 1..H (3 did
                                         # worse than 1 on lift_block: docs/results.md)
    intervention_fraction: float = 0.5   # share of each batch drawn from the intervention rows, once there are any
                                         # (RLPD / HIL-SERL's 50/50; DSRL-SAC has none: they carry no noise)
    takeover_penalty: float = 0.0        # RLIF-style: subtracted from the reward of the decision a takeover cut
    seed: int = 0

    def __post_init__(self) -> None:
        rules = (
                ("algo", self.algo in ALGOS, f"one of {list(ALGOS)}"),
                ("reward", self.reward in REWARD_MODES, f"one of {list(REWARD_MODES)}"),
                ("encoder", self.encoder in ENCODERS, f"one of {list(ENCODERS)}"),
                ("noise_magnitude", _positive(self.noise_magnitude), "a bound > 0"),
                ("noise_segments", isinstance(self.noise_segments, int) and self.noise_segments >= 0,
                 "an integer >= 0 (0: all of w)"),
                ("hidden_dim", self.hidden_dim >= 1, "an integer >= 1"),
                ("num_layers", self.num_layers >= 1, "an integer >= 1"),
                ("num_critics", self.num_critics >= 2, "an integer >= 2 (min over an ensemble)"),
                ("batch_size", self.batch_size >= 1, "an integer >= 1"),
                ("utd", _positive(self.utd), "updates per transition > 0"),
                ("warmup_episodes", self.warmup_episodes >= (self.encoder == "whitened_features"),
                 "an integer >= 0 (>= 1 with encoder whitened_features: its PCA is fit on them)"),
                ("publish_every_updates", self.publish_every_updates >= 1, "an integer >= 1"),
                ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
                ("n_step", isinstance(self.n_step, int) and self.n_step >= 1, "an integer >= 1 (1: one-step TD)"),
                ("tau", 0 < self.tau <= 1, "in (0, 1]"),
                ("lr", _positive(self.lr), "a learning rate > 0"),
                ("actor_lr", self.actor_lr >= 0, "a learning rate > 0, or 0 for lr"),
                ("distill_steps", self.distill_steps >= 1, "an integer >= 1"),
                ("distill_noise_fraction", 0 <= self.distill_noise_fraction <= 1, "in [0, 1]"),
                ("winner_regression", _finite(self.winner_regression) and self.winner_regression >= 0,
                 "a weight >= 0 (0: off)"),
                ("init_temperature", _positive(self.init_temperature), "a temperature > 0"),
                ("init_log_std", -5 < self.init_log_std < 2, "-5 < log sigma < 2"),
                ("encoder_dim", self.encoder_dim >= 1, "an integer >= 1"),
                ("object_colour", _colour(self.object_colour), "a colour '#rrggbb'"),
                ("object_colour_tolerance", _positive(self.object_colour_tolerance) and
                 self.object_colour_tolerance < 1, "a chromaticity distance in (0, 1)"),
                ("object_axis_harmonics", isinstance(self.object_axis_harmonics, int) and
                 1 <= self.object_axis_harmonics <= MAX_AXIS_HARMONICS, f"an integer in 1..{MAX_AXIS_HARMONICS}"),
                ("intervention_fraction", 0 <= self.intervention_fraction <= 1, "a share of each batch in [0, 1]"),
                ("takeover_penalty", _finite(self.takeover_penalty) and self.takeover_penalty >= 0,
                 "a penalty >= 0 (0: off)"))
        check_fields(self, rules)

    @property
    def reads_images(self) -> bool:
        """The agent's encoder reads the camera image + proprio (the replay then serves raw observations)."""
        return self.encoder == "cnn"      # object_moments reads the image once per row, with the base features

    def architecture(self) -> dict:
        """The knobs the tensors and the actor's input depend on (the object's only where the encoder reads it)."""
        keys = [k for k in ARCHITECTURE if self.encoder == "object_moments" or not k.startswith("object_")]
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "agent config") -> "AgentConfig":
        """The agent part of a mapping (other keys, e.g. a learner section's run_dir, are ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(AgentConfig)}
        missing = sorted(names - set(data) - set(ADDED_LATER))
        if missing:
            raise ValueError(f"{where}: missing {missing[0]!r}")
        try:
            return AgentConfig(**(ADDED_LATER | {k: data[k] for k in names if k in data}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err

    @classmethod
    def of(cls, section) -> "AgentConfig":
        """The agent of a config section that extends this class (e.g. the robot config's `learner:`)."""
        return AgentConfig(**{f.name: getattr(section, f.name) for f in fields(AgentConfig)})


def check_fields(config, rules) -> None:
    """rules: (field name, ok, what was expected) triples; the first failing one raises one ValueError naming the
    field, the expectation and the value (the configs in core/ check their fields with this)."""
    for name, ok, expected in rules:
        if not ok:
            value = getattr(config, name)
            raise ValueError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _colour(value: str) -> bool:
    return (isinstance(value, str) and len(value) == 7 and value[0] == "#"
            and all(c in "0123456789abcdefABCDEF" for c in value[1:]))


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0
