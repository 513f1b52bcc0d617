"""services component of Primer."""
