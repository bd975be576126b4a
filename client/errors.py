"""The one base of every failure the client explains in a line: an application catches `s3d_retrieval.Error`,
the CLI prints it as `error: ...` and exits 2."""
from __future__ import annotations


class Error(Exception):
    """A failure with a one-line message naming the input and what to do."""
