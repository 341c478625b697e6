"""Adapters: the outside world on either side of the hexagon."""
