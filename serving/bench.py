"""Served-path figures measured in one run (`make bench`): indexing throughput through the embedded server
over loopback gRPC against the same model called in-process, on the same windows.

`python -m serving.bench [--model-dir models/s3d_milnce]` (the newest version is used).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from client.defaults import FRAMES, MODEL_NAME, SIZE, VIDEO_UINT8_SIGNATURE
from client.transport.session import Options as ClientOptions
from client.transport.session import Session
from serving import launcher
from serving.embedded.server import EmbeddedServer, Options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models") / MODEL_NAME)
    parser.add_argument("--windows", type=int, default=24)
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")  # TF1 API deprecation notices from the loader
    version = max(int(p.name) for p in args.model_dir.iterdir() if p.name.isdigit())
    frames = np.random.default_rng(0).integers(0, 256, (args.windows, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    step = ClientOptions().windows_per_request

    signature = tf.saved_model.load(str(args.model_dir / str(version)), tags=["serve"]).signatures[VIDEO_UINT8_SIGNATURE]

    def in_process() -> None:
        for i in range(0, len(frames), step):
            signature(frames=tf.constant(frames[i: i + step]))

    plan = launcher.Plan(MODEL_NAME, args.model_dir, None, 0, 0, False, None)
    server = EmbeddedServer(Options(models=launcher.model_server_config(plan), host="127.0.0.1", port=0, rest_port=None)).start()
    try:
        with Session(ClientOptions(address=f"127.0.0.1:{server.port}")) as session:
            rows = []
            for name, run in (("in-process", in_process), ("served (gRPC)", lambda: session.embed_windows(frames))):
                run()  # warm-up
                start = time.perf_counter()
                run()
                rows.append((name, args.windows / (time.perf_counter() - start)))
    finally:
        server.stop(grace=5)
    print(f"\n{'indexing ' + str(FRAMES) + 'x' + str(SIZE) + 'x' + str(SIZE) + ', version ' + str(version):34} "
          f"{'windows/s':>12} {'x in-process':>13}")
    for name, rate in rows:
        print(f"  {name:32} {rate:12.1f} {rate / rows[0][1]:13.2f}")


if __name__ == "__main__":
    main()
