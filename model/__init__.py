"""The project's own S3D MIL-NCE network and its TF1 hub-format stand-in module."""
