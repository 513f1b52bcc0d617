"""operators component of Primer."""
