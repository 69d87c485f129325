"""Lightning callbacks."""

from lightning_vitx.callbacks.monitor import ExplainabilityMonitor

__all__ = ["ExplainabilityMonitor"]
