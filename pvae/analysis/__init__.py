"""What to do with a trained VAE: anomaly scores, imputation, the latent space, diagnostics."""
