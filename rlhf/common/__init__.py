"""Plumbing both sides of rlhf use: argument parsing and files, datasets, model loading, distributed setup."""
