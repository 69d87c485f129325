"""Lightning callbacks."""

from lightning_vitx.callbacks.monitor import ExplainabilityMonitor, PanelRows

__all__ = ["ExplainabilityMonitor", "PanelRows"]
