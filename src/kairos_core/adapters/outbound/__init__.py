"""Outbound adapters: where the service writes."""
