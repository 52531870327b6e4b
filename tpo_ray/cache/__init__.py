"""Cache stage: latents and text embeddings computed once, keyed by model fingerprint and resolution."""
