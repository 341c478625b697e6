"""kairos-core: real-time crypto market data."""
