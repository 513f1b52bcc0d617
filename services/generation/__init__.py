"""generation component of Primer."""
