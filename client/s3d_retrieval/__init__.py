"""s3d_retrieval: text-to-video retrieval with S3D MIL-NCE served by TensorFlow Serving.

The one import namespace of the distribution: `s3d_retrieval.client` (the thin client, no TensorFlow),
`.model`, `.export` and `.serving` (the `[tf]` extra). In the repository these are the top-level folders
`client/`, `model/`, `export/` and `serving/`, mapped under this name by `pyproject.toml`; this file lives in
`client/s3d_retrieval/`.
"""
