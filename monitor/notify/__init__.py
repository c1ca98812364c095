"""Durable delivery of alerts: the outbox, the dispatcher, and one module per channel."""
