"""The tasks shipped with the repository and their programmatic scorers."""
