"""`python -m serving`: serve exported versions with TF Serving, its Docker image, or the embedded server.

Uses `tensorflow_model_server` when it is on PATH, else Docker with the pinned image (`-gpu` when a GPU is
visible) when an engine answers, else the embedded TF Serving-compatible server (`--embedded` forces it).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from s3d_retrieval.client.defaults import GRPC_PORT, MODEL_NAME, REST_PORT
from s3d_retrieval.model.quiet import add_verbose_flag, quiet_tensorflow
from s3d_retrieval.serving import launcher
from s3d_retrieval.serving.config import LOAD_RETRIES, LOAD_RETRY_INTERVAL, parse_batching, parse_monitoring


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="use the embedded server even if TF Serving is here")
    parser.add_argument("--model-name", default=MODEL_NAME)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", type=Path, help="base path holding numbered versions (default models/NAME)")
    source.add_argument("--model-config", type=Path, help="a models.config of your own (several models)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (embedded server)")
    parser.add_argument("--port", type=int, default=GRPC_PORT, help=f"gRPC port ({GRPC_PORT})")
    parser.add_argument("--rest-port", type=int, default=REST_PORT, help=f"REST and metrics port ({REST_PORT}); 0: no REST")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="server-side batching with serving/config/batching.config")
    parser.add_argument("--load-retries", type=int, default=LOAD_RETRIES,
                        help=f"retries of a failed version load ({LOAD_RETRIES}, TF Serving's default)")
    parser.add_argument("--load-retry-interval", type=float, default=LOAD_RETRY_INTERVAL, metavar="SECONDS",
                        help=f"pause between load retries ({LOAD_RETRY_INTERVAL:g} s, TF Serving's default)")
    parser.add_argument("--gpu-memory-fraction", type=float,
                        help="share of GPU memory TF Serving may take (default: TF takes nearly all)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0, metavar="SECONDS",
                        help="TF Serving's flag: read the models config again this often (versions, policies, labels "
                             "change without a restart); 0: read once")
    parser.add_argument("--allow_version_labels_for_unavailable_models", action="store_true",
                        help="TF Serving's flag: a new label may name a version that is not loaded yet (labels in "
                             "the config at start need it)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if not args.model_config:
        args.model_dir = args.model_dir or Path("models") / args.model_name
    return args


def run_embedded(args: argparse.Namespace, plan: launcher.Plan) -> int:
    quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from s3d_retrieval.serving.embedded.batching import BatchingOptions
    from s3d_retrieval.serving.embedded.errors import ServingError
    from s3d_retrieval.serving.embedded.manager import LoadRetries
    from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options

    monitoring = parse_monitoring().prometheus_config
    batching = BatchingOptions.from_proto(parse_batching()) if args.batching else None
    options = Options(models=launcher.model_server_config(plan),
                      host=args.host, port=args.port, rest_port=args.rest_port or None,
                      metrics_path=monitoring.path if monitoring.enable else None, poll_seconds=args.poll_seconds,
                      batching=batching, load_retries=LoadRetries(args.load_retries, args.load_retry_interval),
                      config_source=lambda: launcher.model_server_config(plan),
                      config_poll_seconds=plan.config_poll_seconds,
                      allow_unavailable_labels=plan.allow_unavailable_labels)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = EmbeddedServer(options)
    try:
        server.start()
    except ServingError as err:  # a label the config cannot set: TF Serving does not start either
        print(f"error: {err.message} (models config; or pass --allow_version_labels_for_unavailable_models)",
              file=sys.stderr)
        return 2
    host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"serving {args.model_name} (embedded server): gRPC {host}:{server.port}"
          + (f", REST http://{host}:{server.rest.port}" if server.rest else "")
          + (f"; batching up to {batching.max_batch_size} per batch, {batching.batch_timeout_micros} us timeout"
             if batching else "; no batching"),
          flush=True)
    stop.wait()
    print("shutting down: finishing requests in flight", flush=True)
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    parse_batching()  # a broken batching file should fail here, not inside a container
    plan = launcher.Plan(args.model_name, args.model_dir, args.model_config, args.port, args.rest_port,
                         args.batching, args.gpu_memory_fraction, args.load_retries, args.load_retry_interval,
                         args.model_config_file_poll_wait_seconds, args.allow_version_labels_for_unavailable_models)
    if args.embedded or not (shutil.which("tensorflow_model_server") or launcher.docker_engine()):
        return run_embedded(args, plan)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "models.config"
        if shutil.which("tensorflow_model_server"):
            base_path = None
            command, kind = launcher.binary_command(plan, config_file), "tensorflow_model_server"
        else:
            gpu = launcher.gpu_visible()
            base_path = f"{launcher.CONTAINER_MODELS}/{args.model_name}"
            command, kind = launcher.docker_command(plan, config_file, gpu), "Docker " + ("GPU" if gpu else "CPU")
        config_file.write_text(launcher.models_config(plan, base_path))
        print(f"serving {args.model_name} ({kind}): gRPC localhost:{args.port}, REST http://localhost:{args.rest_port}")
        print(" ".join(command), flush=True)
        stop = threading.Event()
        if plan.config_poll_seconds > 0:
            launcher.keep_config(plan, config_file, base_path, stop)
        try:
            return subprocess.call(command)
        finally:
            stop.set()


if __name__ == "__main__":
    sys.exit(main())
