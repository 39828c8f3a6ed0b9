"""Camera gateways in a process of their own, so that their CPU is not counted as comux's.

    python -m benchmarks._live_publisher --bootstrap HOST:PORT --size 640x360 --gop 25 \
        --bframes 0 --seconds 20 CAM [CAM ...]

Encodes one clip, then plays it in real time (25 fps) and in a loop as every CAM until
killed. Prints ``ready`` once every camera has sent its first packet.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from comux.media import synthetic_packets
from comux.publish import publish_forever


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--gop", type=int, default=25)
    parser.add_argument("--bframes", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length before it loops")
    parser.add_argument("cams", nargs="+")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    clip = list(
        synthetic_packets(
            width, height, int(25 * args.seconds), fps=25, gop=args.gop, bframes=args.bframes
        )
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    publish_forever(clip, args.cams, bootstrap_servers=args.bootstrap, stop=stop)
    print("ready", flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
