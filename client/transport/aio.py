"""The session for asyncio (grpc.aio): the same messages, deadlines, back-off and one-line errors as `Session`
(their shared `Protocol`), sent from an event loop, `concurrency` requests in flight. Create it inside the
running loop that uses it (gRPC's asyncio channels belong to one loop)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import numpy as np

from s3d_retrieval.client.defaults import DEFAULT_LABEL, LABELS, PREPROCESSING_OUTPUT, TEXT_OUTPUT, TEXT_SIGNATURE
from s3d_retrieval.client.transport import protos
from s3d_retrieval.client.transport.session import (CHANNEL_OPTIONS, MAX_BACKOFF, METHODS, Options, Protocol,
                                                    ServerError, _serialize, credentials)


class AsyncSession(Protocol):
    """`async with AsyncSession(Options(...)) as s: await s.embed_text([...])`."""

    def __init__(self, options: Options = Options()):
        super().__init__(options)
        secure = credentials(options)
        self.channel = (grpc.aio.secure_channel(options.address, secure, CHANNEL_OPTIONS) if secure
                        else grpc.aio.insecure_channel(options.address, CHANNEL_OPTIONS))
        self._methods = {path: self.channel.unary_unary(path, request_serializer=_serialize,
                                                        response_deserializer=cls.FromString)
                         for path, cls in METHODS}
        self._slots = asyncio.Semaphore(max(1, options.concurrency))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, path: str, request):
        """One RPC with the deadline; UNAVAILABLE retried with jittered back-off for up to `wait` seconds."""
        pause, give_up = self.options.backoff, time.monotonic() + self.options.wait
        while True:
            self._sent()
            try:
                response = await self._methods[path](request, timeout=self.options.timeout)
            except grpc.RpcError as err:
                if (wait := self._retry_pause(err, pause, give_up)) is None:
                    raise self._explain(err) from None
                await asyncio.sleep(wait)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            self._back()
            return response

    async def _predict(self, request: bytes) -> dict[str, np.ndarray]:
        async with self._slots:
            return self._answer(await self.call(protos.PREDICT, request))[0]

    async def embed_text(self, sentences: Sequence[str], version: int | None = None) -> np.ndarray:
        """[N, 512] embeddings of raw sentences by model `version`, `sentences_per_request` a request, requests
        concurrent."""
        words = np.array([s.encode() for s in sentences], dtype=object)
        step = max(1, self.options.sentences_per_request)
        parts = await asyncio.gather(*(self._predict(self._request(TEXT_SIGNATURE, words[i: i + step], (TEXT_OUTPUT,),
                                                                   version))
                                       for i in range(0, len(words), step)))
        return np.concatenate([p[TEXT_OUTPUT] for p in parts])

    async def embed_windows(self, frames: np.ndarray, version: int | None = None) -> np.ndarray:
        """[W, 512] embeddings of uint8 windows [W, T, H, W, 3], several per request, requests concurrent."""
        step = max(1, self.options.windows_per_request)
        parts = await asyncio.gather(*(self._predict(self._video_request(frames[i: i + step], version))
                                       for i in range(0, len(frames), step)))
        return np.concatenate([p["video_embedding"] for p in parts])

    async def preprocessing(self, version: int | None = None) -> dict[str, float] | None:
        """Model `version`'s sampling, as `Session.preprocessing`."""
        try:
            outputs = await self._predict(self._preprocessing_request(version))
        except ServerError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise
        return self._sampling(outputs[PREPROCESSING_OUTPUT])

    async def status(self) -> list[tuple[int, str, int, str]]:
        return self._status_rows(await self.call(protos.GET_MODEL_STATUS, self._status_request()))

    async def metadata(self, version: int | None = None, label: str | None = None) -> tuple[int, object]:
        return self._signatures(await self.call(protos.GET_MODEL_METADATA, self._metadata_request(version, label)))

    async def ensure_ready(self, version: int | None = None) -> int:
        return self._available(await self.status(), version)

    async def label(self, label: str) -> int | None:
        try:
            response = await self.call(protos.GET_MODEL_METADATA, self._metadata_request(label=label))
        except ServerError as err:
            return self._label(label, err)
        return self._label(label, response)

    async def labels(self) -> dict[str, int]:
        return {label: version for label in LABELS if (version := await self.label(label)) is not None}

    async def default_version(self) -> int:
        return await self.ensure_ready(await self.label(DEFAULT_LABEL))
