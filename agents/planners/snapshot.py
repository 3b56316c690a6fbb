"""The planners' picture of the feeder, built in one place from what the agents report."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agents.planners.base import AgentFlex, Snapshot, TransformerSnapshot
from models.grid import transformer_loading_kw
from models.schemas import AgentStatus, CurtailAction


def feeder_loadings(statuses: Iterable[AgentStatus], transformer_ids: Iterable[str] = ()) -> dict[str, float]:
    """Loading of every transformer (kW): the sum of its agents' net powers; listed ones start at 0."""
    by_transformer: dict[str, list[float]] = {tid: [] for tid in transformer_ids}
    for status in statuses:
        by_transformer.setdefault(status.transformer_id, []).append(status.net_power_kw)
    return {tid: transformer_loading_kw(powers) for tid, powers in by_transformer.items()}


def build_snapshot(
    statuses: Iterable[AgentStatus],
    transformer_ids: Iterable[str],
    limits: Callable[[str], tuple[float, float]],
) -> Snapshot:
    """The planners' view of a feeder from its agents' statuses; ``limits(tid)`` gives (rating, reverse limit)."""
    statuses = list(statuses)
    transformers = []
    for tid, loading in feeder_loadings(statuses, transformer_ids).items():
        rating, reverse = limits(tid)
        transformers.append(
            TransformerSnapshot(transformer_id=tid, rating_kw=rating, reverse_limit_kw=reverse, loading_kw=loading)
        )
    agents = tuple(
        AgentFlex(
            agent_id=s.agent_id,
            transformer_id=s.transformer_id,
            net_power_kw=s.net_power_kw,
            headroom_kw={action: s.flexibility.headroom_kw(action) for action in CurtailAction},
            battery_power_kw=s.battery.power_kw if s.battery else 0.0,
            status=s,
        )
        for s in statuses
    )
    timestamps = [s.timestamp for s in statuses if s.timestamp is not None]
    step_s = next((s.step_s for s in statuses), 900.0)
    return Snapshot(
        transformers=tuple(transformers),
        agents=agents,
        timestamp=max(timestamps) if timestamps else None,
        step_s=step_s,
    )
