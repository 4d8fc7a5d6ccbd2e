"""Evaluation of a global model on a held-out split: generation, then task metrics.

Run as its own command (`fedhpc eval`), like the worker: the server launches
it rather than importing model code.
"""
