"""Image-quality and distribution metrics for real vs reconstructed or synthetic volumes."""
