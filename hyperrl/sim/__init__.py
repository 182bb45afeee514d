"""Vectorised environments for a family: built-in batched torch simulators or gymnasium.vector."""
