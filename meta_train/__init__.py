"""meta_train: see README."""
