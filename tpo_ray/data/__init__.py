"""Row schemas, readers and writers (local paths and s3:// through fsspec), synthetic data."""
