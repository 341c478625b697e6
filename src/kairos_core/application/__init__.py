"""Use cases: the bus, the service and its consumers. Imports the domain only."""
