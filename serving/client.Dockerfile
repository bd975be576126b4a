# The thin client (s3d-client) for indexing Jobs and the search page (the [ui] extra): no TensorFlow. Build from the repository root:
#   docker build -f serving/client.Dockerfile -t s3d-client:1 .
FROM python:3.11.10-slim-bookworm

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
# Only the client package: the model, export and serving code need TensorFlow and stay out of this image.
RUN pip install --no-cache-dir '.[ui]' && rm -rf /app/client
USER 1000:1000
ENTRYPOINT ["s3d-client"]
