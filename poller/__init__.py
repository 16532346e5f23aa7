"""poller: turns the 100ms analytics events API into signed, durable webhooks."""

__version__ = "0.1.0"

__all__ = ["__version__"]
