"""margin-monitor: watches leveraged derivatives accounts and warns before liquidation."""

__version__ = "0.1.0"
