"""Search-space YAML files shipped with hilonas (data only; this file lets them install as package data)."""
