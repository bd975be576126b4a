"""What every store of an index offers: the one interface the verbs, `eval`, the Python API and the page use.

A store keeps, per video, an `Entry` (what `index` compares against the file) and its windows (embeddings and
spans), all embedded by one model version, the store's. The folder index (`client.library.index`) and Milvus
(`client.milvus`) implement it; a third store is a module with a `Location` (where the index lives, able to open
it, and to be a name that points at another, `promote`), a `Store` and its `View`. Nothing in `library/` knows
a particular store but the folder index, its own.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.defaults import TIMEOUT
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.rank import Match, Windows

if TYPE_CHECKING:
    from s3d_retrieval.client.library.promote import Name


class StoreError(Error):
    """The index cannot be used as asked (missing, unreadable, another model's, unreachable); one line saying
    what to do. Each store's own errors derive from it."""


@dataclass(frozen=True)
class Entry:
    """A committed video: the file as it was read (size, mtime, content hash), the model version that embedded it,
    its length, and where its windows are (a folder's shard rows; a Milvus collection names no shard)."""

    path: str
    sha256: str
    size: int
    mtime: float
    model_version: int
    duration: float
    shard: str
    first_row: int
    row_count: int

    @property
    def placement(self) -> str:
        """Where the windows are stored: equal placements hold the same vectors (a folder's shards are immutable)."""
        return f"{self.shard}:{self.first_row}:{self.row_count}"


Still = Callable[[Entry], str | None]  # why a video may no longer be committed (its file changed), else None


class View(Protocol):
    """The index as one reader sees it at one moment: what a search ranks, what the page lists."""

    @property
    def generation(self) -> str:
        """Moves with every change of the entries."""

    @property
    def model_version(self) -> int | None:
        """The version that embedded every video, and must embed the queries."""

    @property
    def kind(self) -> str:
        """How it searches ("exact", "ivf", or the store's own)."""

    @property
    def stale(self) -> str | None:
        """Why some videos are searched the slow way, else None."""

    @property
    def videos(self) -> int: ...

    @property
    def windows(self) -> int: ...

    @property
    def entries(self) -> Mapping[str, Entry]:
        """Every video (for listings: a store may read them all to answer)."""

    def entry(self, path: str) -> Entry | None: ...

    def search(self, queries: np.ndarray, top: int, filters: Filters = Filters(),
               moments: int = 1) -> list[list[Match]]:
        """Each query's `top` videos that `filters` accept, by their best window, with up to `moments` moments."""

    def windows_of(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A video's window embeddings [W, D] and spans [W, 2] (None: not a video of this view)."""


class Store(Protocol):
    """An index opened by a reader (view, outdated, entry) or a writer (the rest)."""

    where: str  # how messages name it
    sampling: Sampling  # how its videos were cut into windows
    model_version: int | None  # the version that embedded them (None: an empty index of an earlier release)

    @property
    def target(self) -> Location:
        """The index opened (the one a name pointed at when it was opened)."""

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def resolve(self) -> Location:
        """The index the location this was opened by is now: `target`, unless a name was moved (`promote`)."""

    def view(self, before: View | None = None, kind: str | None = None, nprobe: int | None = None) -> View:
        """The index as it is now; `before`, a view of this store read earlier, lends what has not changed."""

    def outdated(self, view: View) -> bool:
        """Whether `view` no longer shows the index as it is (cheap: asked before every search)."""

    def entry(self, path: str) -> Entry | None:
        """One video's entry as committed now."""

    def entries(self) -> dict[str, Entry]: ...

    def by_hash(self, sha256: str, model_version: int) -> Entry | None:
        """A committed video with this content, whose windows a new path may share (None: embed it)."""

    def commit(self, entries: list[Entry], embeddings: list[np.ndarray], spans: list[np.ndarray],
               reused: Sequence[Entry] = (), still: Still | None = None) -> list[tuple[Entry, str]]:
        """Record new videos with their windows and `reused` ones, each whole or not at all; `still` is asked, as
        late as the store can (under its lock), whether each may still be committed. Returns the videos left out,
        with why."""

    def touch(self, path: str, sha256: str, mtime: float) -> None:
        """A file whose bytes are unchanged but whose mtime moved: record the new mtime, if the entry still holds
        those bytes (`sha256`)."""

    def remove(self, paths: Iterable[str]) -> int:
        """Forget these files, and every video under these folders; how many."""

    def refresh_search(self, *, wait: bool = True, full: bool = True) -> object:
        """Bring what searches the store up to its entries; `wait=False`: not while another writer works;
        `full=False`: only what costs the change (in the middle of a run)."""

    def windows(self, paths: Iterable[str]) -> Windows:
        """The committed windows of `paths`, grouped by video."""

    def vacuum(self, older_than: float | None = None) -> str:
        """Delete what crashed or raced writers left that no video uses (older than `older_than` seconds where
        the store can tell); says what it removed."""


class Location(Protocol):
    """Where an index lives (`index=` in the API): opening it gives its `Store`."""

    def open(self, model: str, *, sampling: Sampling | None = None, create: bool = False, read_only: bool = False,
             lock_wait: float = ..., log: Callable[[str], None] | None = None, timeout: float = TIMEOUT,
             new_sampling: Callable[[], Sampling] | None = None, model_version: int | None = None,
             new_version: Callable[[], int] | None = None) -> Store:
        """The store this location is (or, for a name, points at now), for a reader (`read_only`) or a writer;
        `create` makes it with `sampling` and `model_version` (else `new_sampling()`, `new_version()`: the served
        model's) when missing, and refuses other settings (and another `model_version`) when not."""

    def name(self, lock_wait: float = ...) -> Name:
        """This location as a name readers follow."""
