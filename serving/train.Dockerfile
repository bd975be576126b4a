# MIL-NCE training workers (python -m model train) for the Kubernetes training Job. Build from the repository root:
#   make train-image      (docker build -f serving/train.Dockerfile -t s3d-train:1 .)
# The base is TensorFlow's own GPU image, pinned to the version the lock file installs (a test checks); the project
# is installed from the same lock, so a worker trains with exactly the versions `make test` proved.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY client ./client
COPY model ./model
COPY export ./export
COPY serving ./serving
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
 && pip install --no-cache-dir --no-deps --no-build-isolation . && rm -rf /src
WORKDIR /
ENV TF_CPP_MIN_LOG_LEVEL=2 HOME=/tmp
# Non-root, as the Job's securityContext requires.
USER 1000:1000
ENTRYPOINT ["s3d-model"]
