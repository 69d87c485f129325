"""The monitor's error for a setting that cannot work, raised before the first training step."""

__all__ = ["MonitorConfigError"]


class MonitorConfigError(ValueError):
    """A monitor setting that cannot work with this model or data; raised before the first training step.

    Example::

        >>> from lightning_vitx.callbacks import ExplainabilityMonitor, MonitorConfigError
        >>> issubclass(MonitorConfigError, ValueError)
        True
    """
