"""The grid agent's cycle: registry, calls to agents, the five phases, history and dashboard."""
