"""Composition: the one place that sees settings and concrete adapters together."""
