"""What a control message may do to a Comux: the built-in actions and their limits.

:class:`Acts` is what :class:`comux.control.Control` dispatches to: ``acts(action, value)``
runs the act registered under ``action`` (built in: ``create``, ``delete``, ``update``,
``list``, ``pause``, ``resume``; the caller's acts add to or override them) and returns its
result, or :class:`~comux.control.NoSuchAction` when none is registered. An act that refuses
its value raises :class:`ActionError`, whose text goes into the error reply.

A request is all or nothing: an ``update``, ``pause`` or ``resume`` with any unknown id or bad
setting, and a ``create`` that would go past ``max_cameras``, is refused whole and changes
nothing. The acts need only what :class:`Cameras` lists of a Comux, so this module imports
neither :mod:`comux.app` nor anything that does.

Example::

    acts = Acts(comux, {"snapshot": lambda comux, value: take_snapshot(comux)}, max_cameras=64)
    control = Control("comux.control", acts, bootstrap_servers="127.0.0.1:9092")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

from .batching import POLICIES
from .config import CAM_ID_PATTERN
from .control import NoSuchAction
from .errors import ConfigError

__all__ = [
    "BUILTIN_ACTS",
    "MAX_CAMERAS",
    "UPDATE_FIELDS",
    "Act",
    "ActionError",
    "Acts",
    "Cameras",
    "camera_limit",
]

MAX_CAMERAS = 1024  # the default max_cameras never goes above this, whatever the memory
UPDATE_FIELDS = frozenset({"rate", "max_offset_diff", "policy"})


class Cameras(Protocol):
    """What the built-in acts need of a Comux (:class:`comux.Comux` is one)."""

    @property
    def cam_ids(self) -> list[str]: ...

    @property
    def threads(self) -> Mapping[str, Any]:
        """The connected (started) cameras."""
        ...

    @property
    def _lock(self) -> AbstractContextManager[Any]:
        """Held across a check and the changes it allows: no camera comes or goes between."""
        ...

    def batch_layout(self) -> tuple[tuple[int, ...], int]: ...
    def add_cameras(self, cam_ids: Iterable[str]) -> dict[str, list[str]]: ...
    def kill(self, cam_id: str) -> None: ...
    def update(
        self, cam_id: str, *, rate: Any = ..., max_offset_diff: Any = ..., policy: Any = ...
    ) -> None: ...
    def pause(self, cam_id: str) -> None: ...
    def resume(self, cam_id: str) -> None: ...
    def stats(self) -> dict[str, dict[str, Any]]: ...


C = TypeVar("C", bound=Cameras)
Act = Callable[[C, Any], Any]
"""An action: ``f(comux, value)`` returns the reply's result, or raises to refuse."""


class ActionError(Exception):
    """An act refused its payload; the text goes into the error reply."""


def _cam_ids(value: Any) -> list[str]:
    if not isinstance(value, Mapping) or "cam_ids" not in value:
        raise ActionError('expected {"cam_ids": [...]}')
    ids = value["cam_ids"]
    if not isinstance(ids, list) or not ids:
        raise ActionError("cam_ids must be a non-empty list")
    for cam_id in ids:
        if not isinstance(cam_id, str) or not CAM_ID_PATTERN.fullmatch(cam_id):
            raise ActionError(
                f"invalid cam id {str(cam_id)[:40]!r}: use 1-128 letters, digits, '.', '_', '-'"
            )
    return list(dict.fromkeys(ids))


def _names(ids: Iterable[str]) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def _require_known(comux: Cameras, ids: list[str], *, connected: bool = False) -> None:
    """Refuse the whole request when any id is unknown (or, for ``connected``, not running)."""
    known = set(comux.cam_ids)
    unknown = [cam_id for cam_id in ids if cam_id not in known]
    if unknown:
        raise ActionError(f"unknown cam ids: {_names(unknown)}; nothing was changed")
    if connected:
        running = set(comux.threads)
        idle = [cam_id for cam_id in ids if cam_id not in running]
        if idle:
            raise ActionError(f"cameras not started: {_names(idle)}; nothing was changed")


def _check_settings(settings: Mapping[str, Any]) -> None:
    """Check every value of an ``update`` before any camera takes one."""
    problems = []
    if "rate" in settings:
        rate = settings["rate"]
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or rate <= 0
        ):
            problems.append(f"rate must be a number > 0 or null, got {rate!r}")
    if "max_offset_diff" in settings:
        diff = settings["max_offset_diff"]
        if diff is not None and (isinstance(diff, bool) or not isinstance(diff, int) or diff < 1):
            problems.append(f"max_offset_diff must be an int >= 1 or null, got {diff!r}")
    if "policy" in settings and settings["policy"] not in POLICIES:
        problems.append(f"policy must be one of {list(POLICIES)}, got {settings['policy']!r}")
    if problems:
        raise ActionError("; ".join(problems) + "; nothing was changed")


def _create(comux: Cameras, value: Any) -> dict[str, Any]:
    return comux.add_cameras(_cam_ids(value))


def _delete(comux: Cameras, value: Any) -> dict[str, Any]:
    ids = _cam_ids(value)
    deleted, unknown = [], []
    for cam_id in ids:
        if cam_id in comux.cam_ids:
            comux.kill(cam_id)
            deleted.append(cam_id)
        else:
            unknown.append(cam_id)
    return {"deleted": deleted, "unknown": unknown}


def _update(comux: Cameras, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ActionError("expected a JSON object")
    settings = {k: v for k, v in value.items() if k != "cam_ids" and k != "id"}
    unknown = set(settings) - UPDATE_FIELDS
    if unknown or not settings:
        raise ActionError(f"update takes {sorted(UPDATE_FIELDS)}, got {sorted(settings)}")
    _check_settings(settings)
    with comux._lock:
        ids = _cam_ids(value) if "cam_ids" in value else list(comux.cam_ids)
        _require_known(comux, ids, connected=True)
        for cam_id in ids:
            comux.update(cam_id, **settings)
    return {"updated": ids, "settings": settings}


def _list(comux: Cameras, value: Any) -> dict[str, Any]:
    return {"cam_ids": list(comux.cam_ids), "stats": comux.stats()}


def _each_known(comux: Cameras, value: Any, change: Callable[[str], None]) -> list[str]:
    """Apply ``change`` to every id of ``value`` once all of them are known; none otherwise."""
    ids = _cam_ids(value)
    with comux._lock:
        _require_known(comux, ids)
        for cam_id in ids:
            change(cam_id)
    return ids


def _pause(comux: Cameras, value: Any) -> dict[str, Any]:
    return {"paused": _each_known(comux, value, comux.pause)}


def _resume(comux: Cameras, value: Any) -> dict[str, Any]:
    return {"resumed": _each_known(comux, value, comux.resume)}


BUILTIN_ACTS: Mapping[str, Act[Cameras]] = {
    "create": _create,
    "delete": _delete,
    "update": _update,
    "list": _list,
    "pause": _pause,
    "resume": _resume,
}


def camera_limit(frame_shape: tuple[int, ...], buffers: int) -> int:
    """How many cameras batches of ``frame_shape`` frames can hold on this machine.

    Each camera takes a row of ``frame_shape`` bytes in each of ``buffers`` buffers, and the
    pool doubles its rows as it grows, so count two rows per camera per buffer; the batches
    may take a quarter of the physical memory, and never more than ``MAX_CAMERAS`` rows.
    """
    row = max(1, math.prod(frame_shape)) * max(2, buffers) * 2
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not POSIX: assume 8 GiB
        memory = 8 << 30
    return max(1, min(MAX_CAMERAS, memory // 4 // row))


class Acts(Generic[C]):
    """The actions a control topic may run on ``comux``, and the camera limit of ``create``.

    :param comux: what the acts change (a :class:`comux.Comux`).
    :param acts: action name → ``f(comux, value)``; added to (and overriding) the built-in
        ``create``, ``delete``, ``update``, ``list``, ``pause`` and ``resume``.
    :param max_cameras: ``create`` refuses (whole) to go past this many cameras. Default: what
        the batches can hold in a quarter of this machine's memory (:func:`camera_limit`, at
        most ``MAX_CAMERAS``), from the batch shape at the time of each ``create``.
    """

    def __init__(
        self,
        comux: C,
        acts: Mapping[str, Act[C]] | None = None,
        *,
        max_cameras: int | None = None,
    ) -> None:
        for name, act in (acts or {}).items():
            if not isinstance(name, str) or not callable(act):
                raise ConfigError(f"acts must map names to callables; {name!r} does not")
        if max_cameras is not None and (
            isinstance(max_cameras, bool) or not isinstance(max_cameras, int) or max_cameras < 0
        ):
            raise ConfigError(f"max_cameras must be an int >= 0 or None, got {max_cameras!r}")
        self.comux = comux
        self.acts: dict[str, Act[C]] = {}
        self.acts.update(BUILTIN_ACTS)
        self.acts.update(acts or {})
        self.max_cameras = max_cameras

    def __repr__(self) -> str:
        return f"Acts({sorted(self.acts)}, max_cameras={self.max_cameras})"

    def camera_limit(self) -> int:
        """``max_cameras``, or what the batches can hold on this machine (:func:`camera_limit`)."""
        if self.max_cameras is not None:
            return self.max_cameras
        return camera_limit(*self.comux.batch_layout())

    def __call__(self, action: str, value: Any) -> Any:
        """Run ``action`` with ``value``; :class:`NoSuchAction` when no act has that name."""
        act = self.acts.get(action)
        if act is None:
            return NoSuchAction(action)
        if action == "create":  # the limit holds for a create of the caller's too
            limit = self.camera_limit()
            current = list(self.comux.cam_ids)
            wanted = set(_cam_ids(value)) | set(current)
            if len(wanted) > limit:
                raise ActionError(
                    f"max_cameras is {limit}: refusing to go to {len(wanted)} cameras "
                    f"({len(current)} now); nothing was created"
                )
        return act(self.comux, value)
