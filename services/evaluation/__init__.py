"""evaluation component of Primer."""
