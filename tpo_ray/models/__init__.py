"""Model loading (local, s3://, hub, tiny), text conditioning, denoising errors, reference holders."""
