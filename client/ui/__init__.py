"""The search service (`s3d-client ui`): an HTTP API and a web page over an index. Needs the `[ui]` extra."""
