"""model component of Primer."""
