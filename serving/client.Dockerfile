# The thin client (s3d-client) for indexing Jobs and the search page (the [ui] extra): no TensorFlow. Build from the repository root:
#   docker build -f serving/client.Dockerfile -t s3d-client:1 .
# The distribution is one package, s3d_retrieval, built from all four source folders in a first stage; only its
# wheel reaches the image, installed with the ui extra only, so TensorFlow never does.
FROM python:3.11.10-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY model ./model
COPY export ./export
COPY serving ./serving
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.10-slim-bookworm
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/s3d_retrieval-*.whl)[ui]" && rm -rf /wheels
USER 1000:1000
ENTRYPOINT ["s3d-client"]
