"""relay: a high-throughput bulk-sending SMTP relay."""

__version__ = "0.1.0"
