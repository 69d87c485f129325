"""Lightning callbacks."""

from lightning_vitx.callbacks._panel import PanelRows
from lightning_vitx.callbacks.errors import MonitorConfigError
from lightning_vitx.callbacks.monitor import ExplainabilityMonitor

__all__ = ["ExplainabilityMonitor", "MonitorConfigError", "PanelRows"]
