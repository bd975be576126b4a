"""How the model is served: TF Serving configs, launcher, and an embedded TF Serving-compatible server."""
