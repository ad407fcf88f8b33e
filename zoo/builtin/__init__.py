"""Defaults shipped inside the package: zoo.json plus artefact folders at <base>/<name>/<version>/."""
