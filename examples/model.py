"""A stand-in model for ``comux run examples/config.toml``: mean brightness per camera.

``setup`` runs once before the first batch; what it returns is the ``state`` argument of
``brightness``. A real model would load its weights there.
"""

from __future__ import annotations

import numpy as np

from comux.batching import Batch


def setup(threshold: float = 100.0) -> dict[str, float]:
    """Load the model once (here: just remember the threshold from [model.params])."""
    return {"threshold": threshold}


def brightness(batch: Batch, state: dict[str, float]) -> dict[str, dict[str, object]]:
    """Return headers per camera: the mean brightness of its frame, and whether it is bright."""
    means = batch.frames.reshape(len(batch.cam_ids), -1).mean(axis=1, dtype=np.float64)
    return {
        cam_id: {"brightness": round(float(mean), 1), "bright": bool(mean > state["threshold"])}
        for cam_id, mean, valid in zip(batch.cam_ids, means, batch.valid, strict=True)
        if valid
    }
