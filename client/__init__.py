"""Thin text-to-video retrieval client for a TF Serving S3D MIL-NCE model. Never imports TensorFlow."""
