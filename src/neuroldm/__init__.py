"""neuroldm: synthetic, labelled 3D brain MRI with latent diffusion, and the evidence of whether it is any good."""

__version__ = "0.1.0"
