"""Latency: the timing harness and, later, block keys, tables and prediction."""
