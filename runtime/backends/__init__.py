"""Inference backends, registered by name."""
