"""The ``comux`` command: a local broker, a video publisher and the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .bench import add_bench_parser
from .config import BOOTSTRAP_ENV
from .ctl import add_ctl_parser
from .errors import ComuxError, ConfigError, PortInUseError
from .logs import configure_logging

__all__ = ["main"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV})",
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, unless there is none to show (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """Every verb's parser shows defaults (subparsers are made with the parent's class) and
    takes whole option names only (``--secret`` is not ``--secret-env``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


_DESCRIPTION = (
    "Many Kafka camera streams in, batches of their newest frames out. "
    "Run a local broker, publish video, try the demo, or send a control action."
)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="comux", description=_DESCRIPTION)
    # Before the verb: `comux --log-format json publish ...` (dests of their own, as a verb
    # may have options of the same name).
    parser.add_argument(
        "--log-level",
        dest="main_log_level",
        metavar="LEVEL",
        default="WARNING",
        help="level of comux's log (DEBUG, INFO, ...)",
    )
    parser.add_argument(
        "--log-file",
        dest="main_log_file",
        metavar="FILE",
        help="also log to this file, rotated at 20 MB",
    )
    parser.add_argument(
        "--log-format",
        dest="main_log_format",
        choices=("text", "json"),
        default="text",
        help="json: one object per line",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka broker on 127.0.0.1")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    up = ksub.add_parser("up", help="provision (once) and start the broker in the background")
    up.add_argument("--dir", default=None, help="state folder (default: ~/.cache/comux/kafka)")
    up.add_argument("--port", type=int, default=9092, help="the broker's port on 127.0.0.1")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    for name, text in (("down", "stop the broker"), ("status", "say whether it runs")):
        p = ksub.add_parser(name, help=text)
        p.add_argument("--dir", default=None, help="state folder (default: ~/.cache/comux/kafka)")

    pub = sub.add_parser("publish", help="produce a video's encoded packets, one per message")
    pub.add_argument("source", nargs="?", help="a video file PyAV can demux")
    pub.add_argument("--synthetic", type=_size, metavar="WxH", help="encode a test pattern")
    pub.add_argument("--frames", type=int, default=250, help="frames of --synthetic")
    pub.add_argument("--fps", type=int, default=25, help="frame rate of --synthetic")
    pub.add_argument("--gop", type=int, default=25, help="keyframe interval of --synthetic")
    pub.add_argument("--bframes", type=int, default=2, help="B-frames in a row, --synthetic")
    pub.add_argument("--cam-id", required=True, help="the camera's id: key and topic name")
    _add_bootstrap(pub)
    pub.add_argument(
        "--topic-template", default="raw.:cam_id", help=":cam_id is replaced by --cam-id"
    )
    pub.add_argument(
        "--rate",
        choices=("realtime", "max"),
        default="realtime",
        help="realtime: paced by pts, like a camera; max: as fast as the broker takes them",
    )
    pub.add_argument("--loop", type=int, default=1, help="times to play the source (0: forever)")
    pub.add_argument("--no-progress", action="store_true", help="no progress line on stderr")

    demo = sub.add_parser("demo", help="local broker, synthetic cameras, a stand-in model")
    demo.add_argument("--cameras", type=int, default=4, help="synthetic cameras to publish")
    demo.add_argument(
        "--size", type=_size, default="640x360", metavar="WxH", help="their frame size"
    )
    demo.add_argument("--seconds", type=float, default=20.0, help="how long to run")
    demo.add_argument("--dir", default=None, help="broker state folder")
    demo.add_argument(
        "--port",
        type=int,
        default=None,
        help="the local broker's port (default: 9092, or a free one when 9092 is taken)",
    )
    _add_bootstrap(demo)

    run = sub.add_parser("run", help="run a model on the cameras of a TOML configuration")
    run.add_argument("config", metavar="CONFIG.toml", help="the run's TOML configuration")
    run.add_argument("--check", action="store_true", help="validate (and import the model) only")
    run.add_argument("--grace", type=float, default=10.0, help="seconds a graceful stop may take")
    run.add_argument("--pid-file", default=None, help="write the pid here (removed at exit)")
    run.add_argument("--log-file", default=None, help="also log to this file (rotated)")
    run.add_argument("--log-level", default=None, help="DEBUG, INFO, ... (default: the file's)")
    run.add_argument(
        "--log-format", choices=("text", "json"), default=None, help="default: the file's"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="serve /metrics, /healthz, /readyz on this port (0: a free one, printed); "
        "default: the file's [metrics] port, else none",
    )
    run.add_argument(
        "--live", action="store_true", help="show the `comux top` table while running (a TTY)"
    )

    stop = sub.add_parser("stop", help="SIGTERM a `comux run` by its pid file and wait")
    stop.add_argument("--pid-file", required=True, help="the pid file of that `comux run`")
    stop.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for it")

    add_ctl_parser(sub)
    add_bench_parser(sub)

    top = sub.add_parser("top", help="a live per-camera table from a running comux's /metrics")
    top.add_argument("--metrics", required=True, metavar="URL", help="e.g. 127.0.0.1:9108")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    top.add_argument("--once", action="store_true", help="print one table and exit")
    return parser


def _kafka(args: argparse.Namespace) -> int:
    from .broker import LocalKafka

    if args.kafka_command == "up":
        broker = LocalKafka(args.dir, port=args.port)
        try:
            bootstrap = broker.up(
                timeout=args.timeout, log=lambda line: print(line, file=sys.stderr)
            )
        except PortInUseError as exc:
            print(
                f"comux kafka up: port {exc.port} on 127.0.0.1 is in use by another process. "
                f"Start on another port with --port N, or use the broker that listens there "
                f"with --bootstrap-servers 127.0.0.1:{exc.port} (or ${BOOTSTRAP_ENV}).",
                file=sys.stderr,
            )
            return 1
        print(bootstrap)
        return 0
    broker = LocalKafka(args.dir)
    if args.kafka_command == "down":
        print("stopped" if broker.down() else "not running")
        return 0
    running = broker.status()
    print(f"running at {running}" if running else "not running")
    return 0 if running else 3


def _publish(args: argparse.Namespace) -> int:
    from .media import file_packets, synthetic_packets
    from .publish import publish

    if (args.source is None) == (args.synthetic is None):
        raise SystemExit("comux publish: give either SOURCE or --synthetic WxH")
    if args.synthetic:
        width, height = args.synthetic

        def packets():  # type: ignore[no-untyped-def]
            return synthetic_packets(
                width, height, args.frames, fps=args.fps, gop=args.gop, bframes=args.bframes
            )
    else:
        try:  # a missing or bad file fails here, in one line, before any broker is asked
            opened = [file_packets(args.source)]
        except OSError as exc:
            raise ConfigError(f"cannot open {args.source!r}: {exc.strerror or exc}") from None

        def packets():  # type: ignore[no-untyped-def]
            return opened.pop() if opened else file_packets(args.source)

    stats = publish(
        packets,
        args.cam_id,
        bootstrap_servers=args.bootstrap_servers,
        topic_template=args.topic_template,
        rate=args.rate,
        loop=args.loop,
        progress=not args.no_progress,
    )
    print(stats)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        cameras=args.cameras,
        size=args.size,
        seconds=args.seconds,
        directory=args.dir,
        port=args.port,
        bootstrap_servers=args.bootstrap_servers,
    )


def _ctl(args: argparse.Namespace) -> int:
    from .ctl import run_ctl

    return run_ctl(args)


def _top(args: argparse.Namespace) -> int:
    from .top import run_top

    if not args.interval > 0:
        raise SystemExit("comux top: --interval must be > 0")
    return run_top(args.metrics, interval=args.interval, once=args.once)


def _run(args: argparse.Namespace) -> int:
    from .runner import check, run

    if args.check:
        return check(args.config)
    if not args.grace > 0:
        raise SystemExit("comux run: --grace must be > 0")
    # The verb's own options win, then those given before it, then the file's [log].
    main_level = getattr(args, "main_log_level", None)
    return run(
        args.config,
        grace=args.grace,
        pid_file=args.pid_file,
        log_level=args.log_level or (main_level if main_level != "WARNING" else None),
        log_file=args.log_file or getattr(args, "main_log_file", None),
        log_format=args.log_format,
        metrics_port=args.metrics_port,
        live=args.live,
    )


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def _stop(args: argparse.Namespace) -> int:
    from .runner import stop

    return stop(args.pid_file, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "ctl": _ctl,
        "kafka": _kafka,
        "publish": _publish,
        "demo": _demo,
        "top": _top,
        "run": _run,
        "stop": _stop,
        "bench": _bench,
    }[args.command]
    try:
        configure_logging(args.main_log_level, args.main_log_file, fmt=args.main_log_format)
        return handler(args)
    except ComuxError as exc:
        print(f"comux: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
