"""gateway component of Primer."""
