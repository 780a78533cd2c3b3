"""Class-conditional latent diffusion: the 3D DiT, the DDPM process, training and sampling."""
