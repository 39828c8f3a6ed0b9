# Hand-written stub of the compiled comux/_ext/nal.pyx: keep it in sync with nal.pyx (and with
# comux.annexb.scan, the pure-Python reference).

from typing import Final

__all__ = ["DISPOSABLE", "KEYFRAME", "scan"]

KEYFRAME: Final[int]
DISPOSABLE: Final[int]

def scan(data: bytes, hevc: bool) -> int: ...
