"""Generative evaluation: FID variants, diversity, memorization and conditional fidelity (``neuroldm evaluate``)."""
