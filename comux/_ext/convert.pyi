# Hand-written stub of the compiled comux/_ext/convert.pyx: keep it in sync with convert.pyx
# (and the C kernels it declares in convert.pxd / convert.h).

from collections.abc import Sequence
from typing import Final, Literal

import av
import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = [
    "CHROMA_LOCATIONS",
    "ISA",
    "MATRICES",
    "SUPPORTED_INPUTS",
    "SUPPORTED_OUTPUTS",
    "available_isas",
    "frame_color",
    "out_shape",
    "use_isa",
    "write_frame",
    "write_planes",
]

InputFormat = Literal["yuv420p", "yuvj420p", "nv12"]
OutputFormat = Literal["rgb24", "bgr24", "gray", "yuv420p"]
Matrix = Literal["bt601", "bt709"]
ChromaLocation = Literal["left", "center"]
Isa = Literal["baseline", "sse4.1", "avx2", "avx512vbmi"]

SUPPORTED_INPUTS: Final[tuple[str, ...]]
SUPPORTED_OUTPUTS: Final[tuple[str, ...]]
MATRICES: Final[tuple[str, ...]]
CHROMA_LOCATIONS: Final[tuple[str, ...]]
ISA: Isa
"""The kernel build in use (the best this CPU runs unless ``use_isa`` chose another)."""

def available_isas() -> tuple[Isa, ...]: ...
def use_isa(name: Isa | None = None) -> Isa: ...
def out_shape(width: int, height: int, pix_fmt: OutputFormat = "rgb24") -> tuple[int, ...]: ...
def frame_color(frame: av.VideoFrame) -> tuple[Matrix, bool]: ...
def write_planes(
    src_fmt: InputFormat,
    planes: Sequence[Buffer],
    line_sizes: Sequence[int],
    width: int,
    height: int,
    out: npt.NDArray[np.uint8],
    pix_fmt: OutputFormat = "rgb24",
    *,
    matrix: Matrix = "bt601",
    full_range: bool = False,
    chroma_loc: ChromaLocation = "left",
) -> None: ...
def write_frame(
    frame: av.VideoFrame,
    out: npt.NDArray[np.uint8],
    pix_fmt: OutputFormat = "rgb24",
    *,
    matrix: Matrix | None = None,
    full_range: bool | None = None,
    chroma_loc: ChromaLocation = "left",
) -> None: ...
