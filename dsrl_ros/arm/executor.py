"""The chunk executor's logic: chunk in, safe controller commands and chunk reports out (no ROS import).

`ChunkExecutor` ties the pieces of `dsrl_ros/arm/` together; `nodes/chunk_executor.py` only converts messages
and calls it. Inputs are method calls with the current time (ns); each returns an `Output`: commands for the
controller, reports of chunks that stopped running, and lines to log.

From action to command, per step, starting from the last *commanded* target (never the measured pose, which lags
and would make the arm drift): clip to the config's action limits; scale to robot units; for `ee_delta` add the
deltas to the commanded tool pose, keep it in the workspace and within the per-step limits, solve IK (warm
start: the previous target); clamp the joints to their position and velocity limits; then the backend makes the
command. A step the safety layer changed is reported with what was really commanded, converted back into action
units; untouched steps report the chunk's own action, bit for bit.

The anchor (the commanded target chunks build on) starts from the measured joints at an episode's first chunk and
after every hold (e-stop, watchdog, episode end): the arm is then where it is measured.

Operator takeovers (`on_operator`; who commands each step is `core/intervention.py`'s `OperatorStream`, as in
sim_robot): from the first step due after a takeover, the running chunk's steps are the operator's actions, each
through the same safety layer and chained from the last commanded target (no jump at takeover or hand-back); a
hand-back takes effect at the next chunk's first step. A chunk that arrives while the operator drives is not handed
to the controller unless the operator has handed back by its first step. Reports list each step's source. If the
operator's stream goes stale mid-takeover the arm holds, the chunk ends `teleop_lost` (truncated) and chunks are
refused until the next episode. Between episodes (episode events seen, none running) a fresh intervening stream
drives the arm on the action grid and nothing is reported: an operator's reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsrl_ros.arm.backends import Backend, Target
from dsrl_ros.arm.executor_settings import ExecutorSettings
from dsrl_ros.arm.kinematics import ArmKinematics, Pose, rotate_about_z, rotation_log, yaw_of
from dsrl_ros.arm.safety import (EStop, Hit, LimitLog, Watchdog, check_finite, clamp_ee, clamp_joints,
                                 clamp_rotation_step)
from dsrl_ros.arm.schedule import (END_COMPLETE, END_EPISODE, END_ESTOP, END_SUCCESS, END_WATCHDOG, ChunkSchedule,
                                   ScheduledChunk)
from dsrl_ros.core.intervention import END_TELEOP_LOST, LOST, OPERATOR, POLICY, OperatorStream

POSE_TOLERANCE_M, POSE_TOLERANCE_RAD = 1e-3, 1e-3    # slack for a clamped step's pose against the Cartesian limits


class ChunkRefused(ValueError):
    """A chunk the executor will not run (e-stop engaged, stale joint states, an old episode); no report."""


@dataclass
class ChunkReport:
    seq: int
    episode: int
    indices: list[int]                  # chunk index of each executed step
    stamps_ns: list[int]                # when each was due (commanded)
    actions: np.ndarray                 # (executed, D) as commanded, action units
    dropped_late: int
    limited_steps: int
    ended_by: str
    end_ns: int
    success: bool = False
    truncated: bool = False
    sources: list[int] = field(default_factory=list)   # per executed step: POLICY or OPERATOR


@dataclass
class Output:
    commands: list = field(default_factory=list)
    reports: list[ChunkReport] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def add(self, other: "Output") -> "Output":
        self.commands += other.commands
        self.reports += other.reports
        self.logs += other.logs
        return self


class ChunkExecutor:
    def __init__(self, settings: ExecutorSettings, backend: Backend, kinematics: ArmKinematics):
        self.s, self.backend, self.kin = settings, backend, kinematics
        self.schedule = ChunkSchedule(settings.period_ns, settings.latency_margin_ns)
        self.estop_latch = EStop()
        self.watchdog = Watchdog(settings.joint_state_timeout_ns, settings.chunk_timeout_ns)
        self.limit_log = LimitLog()
        self.measured_q: np.ndarray | None = None
        self.measured_grip: float | None = None
        self.anchor: Target | None = None     # last commanded target; None: start from the measured state
        self.episode = -1                     # episode of the newest accepted chunk
        self.running = False                  # an episode is running (episode events)
        self.running_episode: int | None = None   # once events are seen, only its chunks are run
        self.events_seen = False
        self.ended_episode = -1               # newest episode known to have ended
        self.episode_steps = 0
        self.success_episode = -1             # episode whose success came in between chunks
        self.hold_reason = ""                 # why the watchdog holds ("" when it does not)
        self.operator = OperatorStream(settings.operator_max_age_ns, settings.action_low, settings.action_high)
        self.free_drive_due_ns = -1           # between episodes: when the operator's next step is due
        self._ix = {n: settings.index(n) for n in ("dx", "dy", "dz", "dyaw", "grip")}

    # ---- inputs --------------------------------------------------------------------------------------------
    def on_joint_state(self, q: np.ndarray, grip: float | None, now_ns: int) -> None:
        """The arm's measured joints (config order) and, if the same message carries it, the gripper opening."""
        self.measured_q = np.asarray(q, float)
        if grip is not None:
            self.measured_grip = grip
        self.watchdog.on_joint_state(now_ns)

    def on_gripper_state(self, grip: float) -> None:
        """A gripper opening published on its own (drivers that publish the gripper separately)."""
        self.measured_grip = grip

    def on_operator(self, intervene: bool, action, now_ns: int) -> None:
        """A verified operator command (the node checks signature, freshness and order); ValueError if the action
        is not finite or of the wrong size."""
        self.operator.on_command(intervene, action, now_ns)

    def on_episode(self, episode: int, running: bool, now_ns: int) -> Output:
        out = Output()
        self.events_seen = True
        if running:
            if episode > self.ended_episode:
                if episode != self.running_episode:   # (not a repeated copy of the start: that changes nothing)
                    self.operator.new_episode()
                    self.watchdog.on_chunk(now_ns)    # the chunk timeout counts from the start
                self.running, self.running_episode = True, episode
            return out
        self.ended_episode = max(self.ended_episode, episode)
        self.running, self.running_episode = False, None
        active = self.schedule.active
        if active is not None and active.episode <= episode:
            out.add(self._stop(END_EPISODE, now_ns, hold_if_idle=False))
        return out

    def on_success(self, now_ns: int) -> Output:
        """The task succeeded (a success detector, the sim): the running chunk ends here, reporting success."""
        if self.schedule.active is None:
            self.success_episode = self.episode
            return Output()
        return self._stop(END_SUCCESS, now_ns, success=True)

    def on_chunk(self, seq: int, episode: int, actions: np.ndarray, obs_stamp_ns: int, now_ns: int) -> Output:
        """Schedules a chunk (its first execute_steps actions, (T, D)); raises ValueError if malformed and
        ChunkRefused if it must not run now."""
        actions = np.asarray(actions, np.float32)
        if actions.ndim != 2 or actions.shape[1] != len(self.s.action_names) or len(actions) < 1:
            raise ValueError(f"action_chunk.actions: expected (steps, {len(self.s.action_names)}), got {actions.shape}")
        check_finite(actions)
        if self.estop_latch.engaged:
            raise ChunkRefused(f"e-stop engaged ({self.estop_latch.reason}): chunks are refused until a reset")
        if self.watchdog.joint_states_stale(now_ns):
            raise ChunkRefused(f"holding: {self.watchdog.check(now_ns, False)}")
        if episode < self.episode or episode <= self.ended_episode:
            raise ChunkRefused(f"chunk {seq} is for episode {episode}, which is over")
        if self.events_seen and episode != self.running_episode:
            raise ChunkRefused(f"chunk {seq} is for episode {episode}; the running episode is "
                               f"{self.running_episode if self.running_episode is not None else 'none'}")
        out = Output()
        self.watchdog.on_chunk(now_ns)
        if episode != self.episode:                   # an episode's first chunk: start from the measured state
            out.add(self._stop(END_EPISODE, now_ns, hold_if_idle=False))
            self.episode, self.episode_steps, self.anchor = episode, 0, None
            self.limit_log.new_episode()
            if not self.events_seen:
                self.operator.new_episode()
        if self.operator.lost:
            raise ChunkRefused(f"chunk {seq}: the operator's stream was lost during a takeover in episode "
                               f"{episode}: holding until the next episode")
        out.add(self.tick(now_ns))
        budget = self.s.max_episode_steps - self.episode_steps
        if self.success_episode == episode or budget <= 0:   # success came between chunks / no steps left
            out.reports.append(ChunkReport(seq, episode, [], [], actions[:0], 0, 0,
                                           END_SUCCESS if self.success_episode == episode else END_COMPLETE,
                                           now_ns, self.success_episode == episode, budget <= 0))
            return out
        raw = actions[:budget]
        clipped, hits = self._clip(raw)
        chunk, ended = self.schedule.submit(seq, episode, clipped, obs_stamp_ns, now_ns)
        if ended is not None:
            out.reports.append(self._report(ended))
        start = self._anchor(now_ns)
        targets = self._targets(chunk, start, raw, hits)
        out.logs += self.limit_log.report(hits)
        if chunk.dropped_late:
            out.logs.append(f"chunk {seq}: {chunk.dropped_late} late steps dropped (due before it arrived; "
                            f"{self.schedule.late_total} so far)")
        if targets and self.operator.wants_arm(now_ns):
            chunk.planned = False                      # the operator drives: the policy's plan waits (_operator_tick)
        elif targets:
            out.commands += self.backend.run(start, targets)
        else:
            out.reports.append(self._report(chunk))
        return out

    def estop(self, reason: str, now_ns: int) -> Output:
        """Halt now and stay halted until `reset_estop`."""
        if not self.estop_latch.engage(reason, now_ns):
            return Output()
        out = self._stop(END_ESTOP, now_ns)
        out.logs.append(f"E-STOP engaged ({reason}): holding; chunks refused until reset")
        return out

    def reset_estop(self, now_ns: int) -> Output:
        out = Output()
        if self.estop_latch.reset():
            self.anchor = None
            out.logs.append("e-stop released: the next chunk starts from the measured pose")
        return out

    # ---- the control tick ----------------------------------------------------------------------------------
    def tick(self, now_ns: int) -> Output:
        out = Output()
        if not self.estop_latch.engaged:
            why = self.watchdog.check(now_ns, self.running)
            if why and not self.hold_reason:
                self.hold_reason = why
                out.add(self._stop(END_WATCHDOG, now_ns))
                out.logs.append(f"watchdog: {why}: holding position")
            elif not why and self.hold_reason and not self.watchdog.joint_states_stale(now_ns):
                self.hold_reason = ""
        out.add(self._operator_tick(now_ns))
        self._advance(now_ns)
        finished = self.schedule.take_finished(now_ns)
        if finished is not None:
            out.reports.append(self._report(finished))
        out.commands += self.backend.tick(now_ns)
        return out

    # ---- operator steps ------------------------------------------------------------------------------------
    def _operator_tick(self, now_ns: int) -> Output:
        """Decides who commands each step of the running chunk that is due now (before `_advance` runs it)."""
        chunk, out = self.schedule.active, Output()
        if chunk is None:
            return self._free_drive(now_ns) if self.events_seen and not self.running else out
        prev, dt = self.anchor, self.s.period_ns / 1e9
        for step in chunk.pending:
            if step.due_ns > now_ns:
                break
            who = self.operator.next_step(now_ns, at_decision_start=step is chunk.steps[0])
            if who.source == LOST:
                out.add(self._stop(END_TELEOP_LOST, now_ns, ran_until_ns=step.due_ns - 1))   # this step never ran
                out.logs.append(f"operator stream lost during a takeover (episode {chunk.episode}, chunk "
                                f"{chunk.seq}): holding; chunks refused until the next episode")
                return out
            if prev is None:
                prev = self._anchor(now_ns)
            if who.source == POLICY:
                if not chunk.planned:                  # handed back at the chunk's first step: its plan runs now
                    chunk.planned = True
                    out.commands += self.backend.run(prev, [st.target for st in chunk.pending])
            else:
                hits: list[Hit] = []
                target = self._step_target(who.action, prev, step.due_ns, dt, hits)
                step.action, step.target, step.source, step.limited = who.action, target, OPERATOR, bool(hits)
                step.executed = who.action.copy() if not hits else self._as_action(who.action, prev, target)
                out.commands += self.backend.run(prev, [target])
                out.logs += self.limit_log.report(hits)
            prev = step.target
        return out

    def _free_drive(self, now_ns: int) -> Output:
        """Between episodes: a fresh intervening operator stream moves the arm one step per action period."""
        op = self.operator
        if (not (op.intervene and op.fresh(now_ns)) or now_ns < self.free_drive_due_ns or self.estop_latch.engaged
                or self.hold_reason or self.measured_q is None or self.watchdog.joint_states_stale(now_ns)):
            return Output()
        due = self.schedule.grid_ceil(now_ns)
        self.free_drive_due_ns = due + self.s.period_ns
        prev, hits = self._anchor(now_ns), []
        self.anchor = self._step_target(op.action, prev, due, self.s.period_ns / 1e9, hits)
        return Output(commands=self.backend.run(prev, [self.anchor]), logs=self.limit_log.report(hits))

    # ---- internals -----------------------------------------------------------------------------------------
    def _advance(self, now_ns: int) -> None:
        for step in self.schedule.advance(now_ns):
            self.anchor = step.target
            self.episode_steps += 1

    def _stop(self, reason: str, now_ns: int, success: bool = False, hold_if_idle: bool = True,
              ran_until_ns: int | None = None) -> Output:
        """Ends the running chunk (if any; its steps due by ran_until_ns, default now, count as executed) and holds
        where the arm is measured."""
        out = Output()
        ran_until_ns = now_ns if ran_until_ns is None else ran_until_ns
        self._advance(ran_until_ns)
        stopped = self.schedule.stop(reason, ran_until_ns)
        if stopped is None and not hold_if_idle:
            return out
        if stopped is not None:
            stopped.end_ns = now_ns
            out.reports.append(self._report(stopped, success=success))
        measured = self._measured_target(now_ns)
        if measured is not None:
            out.commands += self.backend.hold(measured, now_ns)
        self.anchor = None
        return out

    def _measured_target(self, now_ns: int) -> Target | None:
        if self.measured_q is None:
            return None
        grip = self.anchor.grip if self.anchor is not None and self.anchor.grip is not None else self.measured_grip
        return Target(now_ns, self.measured_q.copy(), self.kin.fk(self.measured_q), grip)

    def _anchor(self, now_ns: int) -> Target:
        if self.anchor is None:
            if self.measured_q is None:
                raise ChunkRefused("no joint states yet")
            self.anchor = self._measured_target(now_ns)
        return self.anchor

    def _clip(self, actions: np.ndarray) -> tuple[np.ndarray, list[Hit]]:
        hits = []
        for d, name in enumerate(self.s.action_names):
            lo, hi = self.s.action_low[d], self.s.action_high[d]
            if actions[:, d].max() > hi:
                hits.append(Hit(f"action.high[{name}]", float(actions[:, d].max()), float(hi)))
            if actions[:, d].min() < lo:
                hits.append(Hit(f"action.low[{name}]", float(actions[:, d].min()), float(lo)))
        return np.clip(actions, self.s.action_low, self.s.action_high), hits

    def _grip_width(self, action: np.ndarray) -> float | None:
        g = self._ix["grip"]
        if g is None:
            return None
        (a_open, a_closed), (w_open, w_closed) = self.s.grip_action, self.s.grip_width
        frac = float(np.clip((action[g] - a_open) / (a_closed - a_open), 0.0, 1.0))
        return w_open + frac * (w_closed - w_open)

    def _targets(self, chunk: ScheduledChunk, start: Target, raw: np.ndarray, hits: list[Hit]) -> list[Target]:
        """Each on-time step's safe target (chained from `start`); fills step.target, .executed, .limited."""
        targets, prev = [], start
        dt = self.s.period_ns / 1e9
        for step in chunk.steps:
            step_hits: list[Hit] = []
            target = self._step_target(step.action, prev, step.due_ns, dt, step_hits)
            hits += step_hits
            step.target = target
            step.executed = step.action.copy() if not step_hits else self._as_action(step.action, prev, target)
            step.limited = bool(step_hits) or not np.array_equal(step.action, raw[step.index])
            targets.append(target)
            prev = target
        return targets

    def _step_target(self, a: np.ndarray, prev: Target, due_ns: int, dt: float, hits: list[Hit]) -> Target:
        s, lim = self.s, self.s.limits
        grip = self._grip_width(a)
        if s.action_space == "ee_delta":
            ix = self._ix
            xyz, h = clamp_ee(prev.pose.xyz + np.array([a[ix[k]] * s.action_scale[ix[k]] for k in ("dx", "dy", "dz")]),
                              prev.pose.xyz, lim)
            hits += h
            dyaw = 0.0 if ix["dyaw"] is None else float(a[ix["dyaw"]] * s.action_scale[ix["dyaw"]])
            dyaw, h = clamp_rotation_step(dyaw, lim)
            hits += h
            wanted = Pose(xyz, rotate_about_z(prev.pose.rotation, dyaw))
            ik = self.kin.ik(wanted, prev.q)
            if not ik.converged:
                hits.append(Hit("executor.ik_position_error_m", ik.position_error_m, 1e-4))
            q, h = clamp_joints(ik.q, prev.q, dt, lim)
            hits += h
            if ik.converged and not h:
                return Target(due_ns, q, wanted, grip)
            # What the clamped joints really reach must itself pass the Cartesian limits, else the arm holds.
            pose = self.kin.fk(q)
            box, _ = clamp_ee(pose.xyz, prev.pose.xyz, lim)
            turn = float(np.linalg.norm(rotation_log(prev.pose.rotation.T @ pose.rotation)))
            if np.abs(box - pose.xyz).max() > POSE_TOLERANCE_M or turn > lim.max_ee_step_rad + POSE_TOLERANCE_RAD:
                hits.append(Hit("executor.unreachable_step_m", float(np.linalg.norm(wanted.xyz - pose.xyz)), 0.0))
                return Target(due_ns, prev.q.copy(), prev.pose, grip)
            return Target(due_ns, q, pose, grip)
        arm = np.array([a[i] * s.action_scale[i] for i, n in enumerate(s.action_names) if n != "grip"])
        q_wanted = arm if s.action_space == "joint_position" else prev.q + arm
        q, h = clamp_joints(q_wanted, prev.q, dt, lim)
        hits += h
        pose = self.kin.fk(q)
        if lim.workspace_low is not None:
            _, h = clamp_ee(pose.xyz, pose.xyz, lim)
            if h:                                      # a joint-space step leaving the box is not taken
                hits += h
                q, pose = prev.q.copy(), prev.pose
        return Target(due_ns, q, pose, grip)

    def _as_action(self, requested: np.ndarray, prev: Target, target: Target) -> np.ndarray:
        """What was really commanded, in action units (requested values where nothing changed them)."""
        s, out = self.s, np.array(requested, np.float32)
        if s.action_space == "ee_delta":
            ix = self._ix
            delta = target.pose.xyz - prev.pose.xyz
            for k, name in enumerate(("dx", "dy", "dz")):
                out[ix[name]] = delta[k] / s.action_scale[ix[name]]
            if ix["dyaw"] is not None:
                dyaw = (yaw_of(target.pose.rotation) - yaw_of(prev.pose.rotation) + np.pi) % (2 * np.pi) - np.pi
                out[ix["dyaw"]] = dyaw / s.action_scale[ix["dyaw"]]
            return out
        arm = [i for i, n in enumerate(s.action_names) if n != "grip"]
        values = target.q if s.action_space == "joint_position" else target.q - prev.q
        for j, i in enumerate(arm):
            out[i] = values[j] / s.action_scale[i]
        return out

    def _report(self, chunk: ScheduledChunk, success: bool = False) -> ChunkReport:
        done = chunk.executed
        actions = (np.array([st.executed for st in done], np.float32) if done
                   else np.zeros((0, len(self.s.action_names)), np.float32))
        return ChunkReport(chunk.seq, chunk.episode, [st.index for st in done], [st.due_ns for st in done], actions,
                           chunk.dropped_late, sum(st.limited for st in done),
                           chunk.ended_by, chunk.end_ns, success or chunk.ended_by == END_SUCCESS,
                           self.episode_steps >= self.s.max_episode_steps or chunk.ended_by == END_TELEOP_LOST,
                           [st.source for st in done])
