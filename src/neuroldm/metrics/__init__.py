"""Image-quality and distribution metrics for real vs reconstructed or synthetic volumes."""

from neuroldm.metrics.frechet import GaussianMoments, frechet_distance

__all__ = ["GaussianMoments", "frechet_distance"]
