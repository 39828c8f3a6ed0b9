"""The first-generation usage block, nearly verbatim, against a broker with published cameras.

    comux kafka up
    python examples/usage.py --bootstrap-servers 127.0.0.1:9092 --batches 20

It publishes two synthetic cameras in the background, then sets comux up with positional
arguments, both spellings of overwrite and a control topic, and runs the model loop.
"""

import argparse
import os
import threading

import numpy as np

from comux import Comux
from comux.media import synthetic_packets
from comux.publish import publish_forever


def choose_mode_based_on(cam_id):
    return lambda array: {"mean": float(array.mean())}


def prepare(results):
    return {"mean": f"{results['mean']:.2f}"}


args = argparse.ArgumentParser()
args.add_argument("--bootstrap-servers", default=os.environ.get("COMUX_BOOTSTRAP_SERVERS"))
args.add_argument("--batches", type=int, default=20)
args.add_argument("--prefix", default="usage")
opts = args.parse_args()

cam_ids = [f"{opts.prefix}-cam-1", f"{opts.prefix}-cam-2"]
consume_schema, produce_schema = "raw.:cam_id", "out.:cam_id"
consumer_bootstrap_servers = producer_bootstrap_servers = opts.bootstrap_servers.split(",")
control_bootstrap_servers = consumer_bootstrap_servers
config_topic = f"{opts.prefix}.control"
acts = {"ping": lambda comux, value: "pong"}
stop = threading.Event()
clip = list(synthetic_packets(640, 360, 50, gop=25))
publish_forever(clip, cam_ids, bootstrap_servers=opts.bootstrap_servers, stop=stop)

# Write the pid of your process to be used by `terminate.py`
open("pid", "w").write(str(os.getpid()))
# Create an instance (it is better to be one instance per process)
cameras = Comux(cam_ids, consume_schema, produce_schema, "ERROR")
# Make consumers connect (wait for it)
cameras.setup_consumers(
    consumer_bootstrap_servers,
    overwrite=True,
    end=True,
    max_offset_diff=20,
    strict_on_fail=True,
    over_write=False,
    **{},
)
# Make controller connect (wait for it)
cameras.setup_controller(config_topic, control_bootstrap_servers, acts)
# construct a decoder for each camera
cameras.setup_decoders(rate=10, W=1920, H=1080, de_codec="h264", pix_fmt="yuv420p")
# Make producer connect (wait for it)
cameras.setup_producer(producer_bootstrap_servers, strict_on_fail=True, over_write=False, **{})
# Start consuming on the background (multi-thread)
cameras.start()
sent = 0
for _ in range(opts.batches):
    batch: list[tuple[str, int, np.ndarray]] = cameras.get_batch(timeout=10)
    for cam_id, index, array in batch or []:
        model = choose_mode_based_on(cam_id)
        # in case of unsuccessful decoding you get a None for array
        if array is None:
            continue
        # feed
        results = model(array)
        # form your headers from results to be sent
        headers: dict = prepare(results)
        cameras.send(cam_id, index, headers)
        sent += 1

stop.set()
cameras.close()
os.remove("pid")
print(f"sent {sent} results")
