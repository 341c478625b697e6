"""How an operator sees the running service: Prometheus metrics, health endpoints, a terminal dashboard."""
