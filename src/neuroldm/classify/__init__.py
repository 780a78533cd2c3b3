"""3D classifiers of prepared volumes (real, synthetic, mixed), their evaluation grid and their saliency maps."""
