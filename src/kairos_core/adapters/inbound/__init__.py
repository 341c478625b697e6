"""Inbound adapters: sources of market data."""
