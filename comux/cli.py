"""The ``comux`` command: a local broker, a video publisher and the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import BOOTSTRAP_ENV
from .errors import ComuxError

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka broker on 127.0.0.1")
    ksub = kafka.add_subparsers(dest="kafka_command", required=True)
    up = ksub.add_parser("up", help="provision (once) and start the broker in the background")
    up.add_argument("--dir", default=None, help="state folder (default: ~/.cache/comux/kafka)")
    up.add_argument("--port", type=int, default=9092)
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    for name, text in (("down", "stop the broker"), ("status", "say whether it runs")):
        p = ksub.add_parser(name, help=text)
        p.add_argument("--dir", default=None)

    pub = sub.add_parser("publish", help="produce a video's encoded packets, one per message")
    pub.add_argument("source", nargs="?", help="a video file PyAV can demux")
    pub.add_argument("--synthetic", type=_size, metavar="WxH", help="encode a test pattern")
    pub.add_argument("--frames", type=int, default=250, help="frames of --synthetic")
    pub.add_argument("--fps", type=int, default=25, help="frame rate of --synthetic")
    pub.add_argument("--gop", type=int, default=25, help="keyframe interval of --synthetic")
    pub.add_argument("--bframes", type=int, default=2, help="B-frames in a row, --synthetic")
    pub.add_argument("--cam-id", required=True)
    _add_bootstrap(pub)
    pub.add_argument("--topic-template", default="raw.:cam_id")
    pub.add_argument("--rate", choices=("realtime", "max"), default="realtime")
    pub.add_argument("--loop", type=int, default=1, help="times to play the source (0: forever)")
    pub.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="local broker, synthetic cameras, a stand-in model")
    demo.add_argument("--cameras", type=int, default=4)
    demo.add_argument("--size", type=_size, default=(640, 360), metavar="WxH")
    demo.add_argument("--seconds", type=float, default=20.0)
    demo.add_argument("--dir", default=None, help="broker state folder")
    demo.add_argument("--port", type=int, default=9092)
    _add_bootstrap(demo)
    return parser


def _kafka(args: argparse.Namespace) -> int:
    from .broker import LocalKafka

    if args.kafka_command == "up":
        broker = LocalKafka(args.dir, port=args.port)
        print(broker.up(timeout=args.timeout, log=lambda line: print(line, file=sys.stderr)))
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

        def packets():  # type: ignore[no-untyped-def]
            return file_packets(args.source)

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"kafka": _kafka, "publish": _publish, "demo": _demo}[args.command]
    try:
        return handler(args)
    except ComuxError as exc:
        print(f"comux: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
