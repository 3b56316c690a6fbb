"""The ai planner: an OpenAI chat model proposes a plan; physics guardrails decide whether it is used.

The model sees only numbers and aliases (``t1``, ``a1``...): no text an agent reported reaches the
prompt, so nothing an agent says can steer the model. Its answer is parsed into the same
``Command`` model the other planners emit, checked (known agents and actions, finite
non-negative kW within each agent's headroom, no transformer made worse, nothing left out of
limits that the optimal plan would fix), and on any failure the optimal plan is used instead with
the reason recorded: its kind (``models.schemas.FallbackKind``) and its words (``Plan.fallback``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace

import openai
from pydantic import BaseModel, Field, ValidationError

from agents.planners.base import MIN_COMMAND_KW, Command, Fallback, Plan, Snapshot, apply_plan, violations_after
from agents.planners.optimal import ACTION_COST, plan_optimal
from models.schemas import CurtailAction, FallbackKind

logger = logging.getLogger(__name__)

#: Within this many kW a plan counts as not making a transformer worse, or as fixing it as well as the optimum.
GUARD_TOLERANCE_KW = 1e-3


class ModelCommand(Command):
    """A command as the model writes it: ``agent_id`` is the alias given in the prompt."""


class ModelPlan(BaseModel):
    """The JSON object the model must answer with."""

    commands: list[ModelCommand] = Field(default_factory=list, description="Commands to send; empty if none are needed")


def _quoted(actions: tuple[CurtailAction, ...]) -> str:
    """Actions for the prompt, cheapest first: '"discharge_battery" and "shed_load"'."""
    return " and ".join(f'"{a.value}"' for a in sorted(actions, key=ACTION_COST.__getitem__))


SYSTEM_PROMPT = f"""You are the operator of a low-voltage distribution feeder. You decide which agents \
change their power this 15-minute step so that every transformer stays within its limits.

Physics and signs:
- A transformer's loading_kw is the sum of its agents' net power. Positive = import from the grid, negative = export.
- It must satisfy -reverse_limit_kw <= loading_kw <= rating_kw. Above rating_kw is an overload; below -reverse_limit_kw is reverse power flow.
- Actions shift one agent's net power by power_kw (>= 0): {_quoted(CurtailAction.moving(-1))} LOWER it (use them against overload); \
{_quoted(CurtailAction.moving(+1))} RAISE it (use them against reverse power flow).
- Each agent lists the most each action can apply now (headroom_kw). Never exceed it. Only use agent ids and actions that are listed.
- Prefer batteries, then solar curtailment, then load shedding (shedding inconveniences people). Use as little as needed.
- Do not push any transformer outside its limits, and touch no agent on a transformer that is within its limits.

Answer with one JSON object and nothing else, matching this JSON schema:
""" + json.dumps(ModelPlan.model_json_schema())


@dataclass
class AiStats:
    """Counters shown in the grid agent's /status."""

    calls: int = 0
    plans_used: int = 0
    top_ups: int = (
        0  # accepted plans that left a sliver (within the guard's tolerance) for the optimal planner to finish
    )
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: list[float] = field(default_factory=list)
    fallback_reasons: dict[str, int] = field(default_factory=dict)  # fallbacks by kind (FallbackKind's values)

    def as_dict(self) -> dict:
        ordered = sorted(self.latency_ms)
        return {
            "calls": self.calls,
            "plans_used": self.plans_used,
            "top_ups": self.top_ups,
            "fallbacks": self.fallbacks,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms_median": ordered[len(ordered) // 2] if ordered else None,
            "latency_ms_max": ordered[-1] if ordered else None,
            "fallback_reasons": dict(self.fallback_reasons),
        }


class PlanRejected(Exception):
    """The model's answer cannot be used: ``kind`` says which way, the message says why."""

    def __init__(self, kind: FallbackKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def build_prompt(snapshot: Snapshot) -> tuple[str, dict[str, str]]:
    """The user message (numbers and aliases only) and the alias -> agent id map."""
    t_alias = {t.transformer_id: f"t{i + 1}" for i, t in enumerate(snapshot.transformers)}
    a_alias = {a.agent_id: f"a{i + 1}" for i, a in enumerate(snapshot.agents)}
    payload = {
        "transformers": [
            {
                "id": t_alias[t.transformer_id],
                "loading_kw": round(t.loading_kw, 3),
                "rating_kw": round(t.rating_kw, 3),
                "reverse_limit_kw": round(t.reverse_limit_kw, 3),
            }
            for t in snapshot.transformers
        ],
        "agents": [
            {
                "id": a_alias[a.agent_id],
                "transformer": t_alias.get(a.transformer_id, "unknown"),
                "net_power_kw": round(a.net_power_kw, 3),
                "headroom_kw": {
                    action.value: round(kw, 3) for action, kw in a.headroom_kw.items() if kw > MIN_COMMAND_KW
                },
            }
            for a in snapshot.agents
        ],
    }
    return json.dumps(payload, separators=(",", ":")), {alias: agent_id for agent_id, alias in a_alias.items()}


def check_plan(
    snapshot: Snapshot, proposed: ModelPlan, agents_by_alias: dict[str, str], reference: Plan
) -> list[Command]:
    """The model's plan as commands, if it passes every guardrail; otherwise PlanRejected says why."""
    flex = {a.agent_id: a for a in snapshot.agents}
    commands: list[Command] = []
    seen: set[tuple[str, CurtailAction]] = set()
    for c in proposed.commands:
        agent_id = agents_by_alias.get(c.agent_id)
        if agent_id is None:
            raise PlanRejected(FallbackKind.unknown_agent, f"unknown agent {c.agent_id[:32]!r}")
        if (agent_id, c.action) in seen:
            raise PlanRejected(FallbackKind.duplicate_command, f"two {c.action.value} commands for {c.agent_id}")
        seen.add((agent_id, c.action))
        if not math.isfinite(c.power_kw) or c.power_kw < 0:
            reason = f"{c.agent_id} {c.action.value}: power_kw must be finite and >= 0"
            raise PlanRejected(FallbackKind.infeasible, reason)
        headroom = flex[agent_id].headroom_kw.get(c.action, 0.0)
        if c.power_kw > headroom + GUARD_TOLERANCE_KW:
            raise PlanRejected(
                FallbackKind.infeasible,
                f"{c.agent_id} {c.action.value} {c.power_kw:.3f} kW exceeds its headroom of {headroom:.3f} kW",
            )
        if c.power_kw > MIN_COMMAND_KW:
            commands.append(Command(agent_id=agent_id, action=c.action, power_kw=min(c.power_kw, headroom)))
    after = violations_after(snapshot, commands)
    best = violations_after(snapshot, reference.commands)
    for t in snapshot.transformers:
        before_kw, after_kw, best_kw = t.violation_kw, after[t.transformer_id], best[t.transformer_id]
        if after_kw > before_kw + GUARD_TOLERANCE_KW:
            raise PlanRejected(
                FallbackKind.worsens,
                f"the plan makes {t.transformer_id} worse ({before_kw:.2f} -> {after_kw:.2f} kW outside its limits)",
            )
        if after_kw > best_kw + GUARD_TOLERANCE_KW:
            raise PlanRejected(
                FallbackKind.short_of_optimal,
                f"the plan leaves {t.transformer_id} {after_kw:.2f} kW outside its limits; "
                f"the optimal plan leaves {best_kw:.2f} kW",
            )
    return commands


def top_up(snapshot: Snapshot, commands: list[Command]) -> tuple[list[Command], bool]:
    """The model's commands, plus what the optimal planner adds to close what they leave open.

    The prompt rounds figures to 1 W and the guard accepts plans within GUARD_TOLERANCE_KW of the
    optimum, so an accepted plan can leave a transformer a few watts outside its limit. The
    residual is planned on what the model's commands left of each agent's headroom.
    """
    after = apply_plan(snapshot, commands)
    transformers = tuple(replace(t, loading_kw=after[t.transformer_id]) for t in snapshot.transformers)
    if all(t.violation_kw <= 0 for t in transformers):
        return commands, False
    used: dict[tuple[str, CurtailAction], float] = {}
    for c in commands:
        used[c.agent_id, c.action] = used.get((c.agent_id, c.action), 0.0) + c.power_kw
    residual = Snapshot(
        transformers=transformers,
        agents=tuple(
            replace(
                a,
                headroom_kw={
                    action: max(kw - used.get((a.agent_id, action), 0.0), 0.0) for action, kw in a.headroom_kw.items()
                },
            )
            for a in snapshot.agents
        ),
        timestamp=snapshot.timestamp,
        step_s=snapshot.step_s,
    )
    extra = plan_optimal(residual).commands
    if not extra:
        return commands, False
    for c in extra:
        used[c.agent_id, c.action] = used.get((c.agent_id, c.action), 0.0) + c.power_kw
    return [Command(agent_id=a, action=act, power_kw=kw) for (a, act), kw in used.items()], True


class AiPlanner:
    """Ask the model for a plan; fall back to the optimal plan, with the reason, whenever it cannot be trusted.

    A ``Planner``: the grid agent's cycle awaits ``plan`` like any other's.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI | None,
        model: str = "gpt-3.5-turbo",
        timeout_s: float = 5.0,
        missing_reason: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.timeout_s = timeout_s
        self.missing_reason = missing_reason or "OPENAI_API_KEY is not set"
        self.stats = AiStats()

    async def plan(self, snapshot: Snapshot) -> Plan:
        """The model's plan (``planner`` "ai"), or the optimal plan with its ``fallback`` saying why."""
        reference = plan_optimal(snapshot)
        if not any(t.violation_kw > 0 for t in snapshot.transformers):
            return Plan("ai")  # nothing to decide: no call, no tokens
        if self.client is None:
            return self._fallback(reference, FallbackKind.missing_key, self.missing_reason)
        prompt, agents_by_alias = build_prompt(snapshot)
        self.stats.calls += 1
        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                self.client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                    response_format={"type": "json_object"},
                    temperature=0,
                ),
                timeout=self.timeout_s,
            )
        except (TimeoutError, openai.APITimeoutError):
            reason = f"model timed out after {self.timeout_s:g} s"
            return self._fallback(reference, FallbackKind.timeout, reason, started)
        except openai.RateLimitError:
            return self._fallback(reference, FallbackKind.rate_limited, "model rate-limited (HTTP 429)", started)
        except openai.APIStatusError as exc:
            reason = f"model server error (HTTP {exc.status_code})"
            return self._fallback(reference, FallbackKind.server_error, reason, started)
        except openai.APIConnectionError as exc:
            reason = f"model unreachable ({type(exc).__name__})"
            return self._fallback(reference, FallbackKind.connection, reason, started)
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: a JSON body the client cannot decode
            reason = f"model call failed ({type(exc).__name__})"
            return self._fallback(reference, FallbackKind.call_failed, reason, started)
        self._record_latency(started)
        usage = getattr(response, "usage", None)  # a server answering 200 with a non-JSON page gives a str
        if usage is not None:
            self.stats.prompt_tokens += usage.prompt_tokens or 0
            self.stats.completion_tokens += usage.completion_tokens or 0
        try:
            choice = response.choices[0]
            if getattr(choice.message, "refusal", None) or choice.finish_reason == "content_filter":
                raise PlanRejected(FallbackKind.refusal, "the model refused")
            if choice.finish_reason == "length":
                raise PlanRejected(FallbackKind.truncated, "the model's answer was cut off")
            proposed = ModelPlan.model_validate_json(choice.message.content or "")
            commands = check_plan(snapshot, proposed, agents_by_alias, reference)
        except (IndexError, AttributeError):
            return self._fallback(reference, FallbackKind.no_answer, "the model sent no answer")
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "answer"
            return self._fallback(reference, FallbackKind.bad_json, f"invalid plan JSON at {where}: {error['msg']}")
        except PlanRejected as exc:
            return self._fallback(reference, exc.kind, f"plan rejected: {exc}")
        self.stats.plans_used += 1
        commands, topped_up = top_up(snapshot, commands)
        self.stats.top_ups += topped_up
        return Plan("ai", commands)

    async def aclose(self) -> None:
        """Close the model client."""
        if self.client is not None:
            await self.client.close()

    def _record_latency(self, started: float) -> None:
        self.stats.latency_ms.append((time.perf_counter() - started) * 1000)
        del self.stats.latency_ms[:-1000]

    def _fallback(self, reference: Plan, kind: FallbackKind, reason: str, started: float | None = None) -> Plan:
        """The optimal plan in place of the model's, saying why."""
        if started is not None:
            self._record_latency(started)
        self.stats.fallbacks += 1
        self.stats.fallback_reasons[kind.value] = self.stats.fallback_reasons.get(kind.value, 0) + 1
        logger.warning("ai planner fell back to optimal (%s): %s", kind.value, reason)
        return replace(reference, fallback=Fallback(kind, reason))
