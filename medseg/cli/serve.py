"""``medseg serve`` / ``worker`` / ``status`` / ``demo``: the DICOM listener service."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from medseg.errors import ConfigError
from medseg.server.config import ServerConfig, default_config_path, load_config


def _config(args: argparse.Namespace) -> ServerConfig:
    config = load_config(Path(args.config) if args.config else default_config_path())
    if getattr(args, "port", None) is not None:
        listener = dataclasses.replace(config.listener, port=args.port)
        config = dataclasses.replace(config, listener=listener)
    return config


def _service_logging(args: argparse.Namespace) -> None:
    """A service tells its administrator what it does: medseg's own INFO lines by default
    (study/series UIDs, never patient names or IDs); ``-v`` adds the libraries' INFO."""
    if args.verbose == 0:
        logging.getLogger("medseg").setLevel(logging.INFO)


def _serve(args: argparse.Namespace) -> int:
    from medseg.server.service import Service

    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be 0 (listen only) or more, got {args.workers}")
    _service_logging(args)
    Service(_config(args), listen=True, workers=args.workers).run_forever()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from medseg.server.service import Service

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {args.workers}")
    _service_logging(args)
    config = _config(args)
    workers = args.workers if args.workers is not None else max(1, config.queue.workers)
    Service(config, listen=False, workers=workers).run_forever()
    return 0


def _status(args: argparse.Namespace) -> int:
    from medseg.server.status import collect_status, format_status

    status = collect_status(_config(args))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from medseg.server.demo import DEMO_SEED, DemoOptions, run_demo

    options = DemoOptions(
        host=args.host,
        port=args.port,
        called_ae=args.called_ae,
        calling_ae=args.calling_ae,
        receive_port=args.receive_port,
        timeout=args.timeout,
        seed=DEMO_SEED if args.seed is None else args.seed,
        output=Path(args.output) if args.output else None,
    )
    print(run_demo(options).summary())
    return 0


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help="configuration TOML (default: the bundled pacs_config/default.toml)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the DICOM listener with in-process workers", description=__doc__
    )
    _add_config(serve)
    serve.add_argument("--port", type=int, help="override listener.port")
    serve.add_argument("--workers", type=int, help="override queue.workers (0 = listen only)")
    serve.set_defaults(func=_serve)

    worker = subparsers.add_parser("worker", help="run queue workers only (scale-out)")
    _add_config(worker)
    worker.add_argument("--workers", type=int, help="worker threads (default queue.workers)")
    worker.set_defaults(func=_worker)

    status = subparsers.add_parser("status", help="queue depth, jobs, errors, delivery backlog")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    demo = subparsers.add_parser(
        "demo", help="send a phantom series to a running listener and wait for its SEG"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=11112)
    demo.add_argument("--called-ae", default="MEDSEG")
    demo.add_argument("--calling-ae", default="MEDSEG-DEMO")
    demo.add_argument("--receive-port", type=int, default=11113, help="where the SEG comes back")
    demo.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the SEG")
    demo.add_argument(
        "--seed", type=int, help="phantom seed (default: one whose phantom has a lesion)"
    )
    demo.add_argument("-o", "--output", help="also save the SEG that came back here")
    demo.set_defaults(func=_demo)
