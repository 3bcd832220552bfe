"""Generic, world-agnostic analyses: each takes an agent and data and returns data."""
