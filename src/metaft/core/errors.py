"""Errors the training loops raise for the runtime to report."""


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss, gradient or weight is NaN or Inf."""
