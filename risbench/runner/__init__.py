"""Sweeps: experiment files expanded into runs, handed to a backend, and their results collected into tables."""
