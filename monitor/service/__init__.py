"""Wiring: the daemon, its scheduler, logging and shutdown; the only package that knows every other part."""
