"""A still of a moment: the JPEG of the frame a video shows at a time, for reports and the search page."""
from __future__ import annotations

import cv2

from s3d_retrieval.client.decode.video import Capture, square


def jpeg_at(path: str, seconds: float, size: int) -> bytes | None:
    """A `size` x `size` JPEG of the frame shown at `seconds`, or None if the file cannot give one."""
    try:
        cap = Capture(path)
    except Exception:  # noqa: BLE001 - a still is optional: any file that will not open has none
        return None
    try:
        frame = cap.frame_at(seconds)
        if frame is None:
            return None
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(square(frame, size), cv2.COLOR_RGB2BGR))
        return jpeg.tobytes() if ok else None
    finally:
        cap.close()
