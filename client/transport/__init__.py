"""Stage 2, transport: TF Serving's gRPC API spoken with our own messages, deadlines and retries."""
