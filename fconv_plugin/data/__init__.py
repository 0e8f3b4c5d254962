"""Corpus builders for recipes that need no download."""
