"""Generation: one-pass latent sampling, depthwise decoding, synthetic cohort writing."""
