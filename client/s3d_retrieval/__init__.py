"""s3d_retrieval: text-to-video retrieval with S3D MIL-NCE served by TensorFlow Serving.

The one import namespace of the distribution: `s3d_retrieval.client` (the thin client, no TensorFlow),
`.model`, `.export` and `.serving` (the `[tf]` extra). In the repository these are the top-level folders
`client/`, `model/`, `export/` and `serving/`, mapped under this name by `pyproject.toml`; this file lives in
`client/s3d_retrieval/`.

The API for applications is here: `Client` (and `AsyncClient`), their results, and `Error`, the base of every
failure they explain in one line.
"""
from s3d_retrieval.client.api import AsyncClient, Client, VideoWindows
from s3d_retrieval.client.decode.video import Sampling, VideoError
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.evalset import EvalSetError
from s3d_retrieval.client.library.evaluate import Evaluation
from s3d_retrieval.client.library.index import IndexFolderError, IndexWriteError
from s3d_retrieval.client.library.indexing import Stats
from s3d_retrieval.client.library.like import Like, LikeError
from s3d_retrieval.client.library.lock import LockTimeout
from s3d_retrieval.client.library.merge import MergeStats
from s3d_retrieval.client.library.moments import Moment
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.search import Result
from s3d_retrieval.client.library.store import StoreError
from s3d_retrieval.client.milvus.store import Milvus, MilvusError
from s3d_retrieval.client.transport.session import ServerError

__all__ = ["AsyncClient", "Client", "Error", "EvalSetError", "Evaluation", "Filters", "IndexFolderError",
           "IndexWriteError", "Like", "LikeError", "LockTimeout", "Match", "MergeStats", "Milvus", "MilvusError", "Moment",
           "Result",
           "Sampling", "ServerError", "Stats", "StoreError", "VideoError", "VideoWindows"]
