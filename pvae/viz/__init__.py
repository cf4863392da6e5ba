"""Every picture pvae makes (samples, reconstructions, latent maps, anomaly and k-hat plots)."""
