"""Turn a TF Hub S3D MIL-NCE module into a verified TF Serving model version."""
