"""The coordinator's own modules (launching, progress, reports); no agent imports them."""

from agents.coordinator.run import Coordinator, CoordinatorSettings, main

__all__ = ["Coordinator", "CoordinatorSettings", "main"]
