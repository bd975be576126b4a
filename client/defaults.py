"""The one source of truth for the project's defaults: model name, signatures, ports, preprocessing.

Lives in the client because everything else (export, serving, tests) can import the client, while the
client must never import TensorFlow.
"""
from __future__ import annotations

MODEL_NAME = "s3d_milnce"
HUB_HANDLE = "https://tfhub.dev/deepmind/mil-nce/s3d/1"

GRPC_PORT = 8500
REST_PORT = 8501
# The model server a client asks when no address is given: $S3D_SERVER (a container's or a shell's setting), else
# this machine's GRPC_PORT.
SERVER_ENV = "S3D_SERVER"
UI_PORT = 8080  # s3d-client ui: the search page and its JSON API

# Signatures of an exported model version (the first and last are the hub module's own contract).
VIDEO_SIGNATURE = "video"  # images: float32 [B,T,H,W,3] in [0,1]
VIDEO_UINT8_SIGNATURE = "video_uint8"  # frames: uint8 [B,T,H,W,3] in 0..255, 4x smaller requests
TEXT_SIGNATURE = "text"  # words: string [B]
DEFAULT_SIGNATURE = TEXT_SIGNATURE  # what `serving_default` answers: plain sentences, easy over REST
# keys: string [N] names of settings ("frames", "fps", "size") -> values: float32 [N], the sampling the model
# was trained with (-1 for an unknown name). The preprocessing config travels with the model this way.
PREPROCESSING_SIGNATURE = "preprocessing"
PREPROCESSING_OUTPUT = "values"
# Each signature's one input key.
INPUT_KEYS = {VIDEO_SIGNATURE: "images", VIDEO_UINT8_SIGNATURE: "frames", TEXT_SIGNATURE: "words",
              PREPROCESSING_SIGNATURE: "keys"}
VIDEO_OUTPUTS = ("video_embedding", "mixed_5c")
TEXT_OUTPUT = "text_embedding"

# The version labels a client asks the server for (TF Serving cannot list them), and the one whose version a new
# index takes when no version is asked (else the newest served).
LABELS = ("stable", "canary")
DEFAULT_LABEL = "stable"

# Requests stay within the server's batching limit (serving/config/batching.config max_batch_size 16): TF Serving
# refuses a request larger than a batch ("Task size N is larger than maximum input batch size").
WINDOWS_PER_REQUEST = 4
SENTENCES_PER_REQUEST = 16

# Preprocessing the model was trained with (reference §2): 32 RGB frames at 10 fps, 224x224.
FRAMES = 32
FPS = 10.0
SIZE = 224

# Seconds a writer of an index (index, merge, remove, eval --index) waits while another writer changes it: long
# enough to outlast a search-structure build of a large index (~10 min at 10M windows on 2 cores).
LOCK_WAIT = 1800.0

# Seconds a call (to the model server, or to a store such as Milvus) may take before it is given up.
TIMEOUT = 60.0

# Windows an `index` run commits between two updates of the search structure: readers score the windows the
# structure lacks one shard at a time, so the fewer, the faster a search during a long run (bench: 16,384 keeps
# the page within ~2x of idle while a run commits into a 1M-window index).
REFRESH_EVERY = 16_384

# Seconds a Milvus window no video names is left alone by `vacuum`: a writer in flight may be about to commit it.
VACUUM_AGE = 3600.0

# Seconds a client keeps retrying while the model server is UNAVAILABLE (restarting, pods rolling): an index run
# is a long job that should ride out a rolling update; the other verbs answer a person and fail soon.
INDEX_WAIT = 300.0
SHORT_WAIT = 10.0
