"""Exchange access: ccxt clients (transport) and one adapter module per exchange family."""
