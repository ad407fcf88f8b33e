"""fine_tune: see README."""
