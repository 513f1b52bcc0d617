"""curation component of Primer."""
