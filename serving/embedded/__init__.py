"""A TF Serving-compatible server in Python (gRPC and REST), for machines without TF Serving."""
