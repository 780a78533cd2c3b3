"""The 3D KL autoencoder: network presets (`network`), training losses (`losses`, `perceptual`) and
bounded-memory encoding/decoding of full-size volumes (`decode`)."""
