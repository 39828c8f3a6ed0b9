"""The ``comux`` logger: a level, stderr by default, a rotating file on request."""

from __future__ import annotations

import logging
import logging.handlers
import os

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def configure_logging(
    level: str | int = "ERROR", log_file: str | os.PathLike | None = None
) -> logging.Logger:
    """Set the level of the ``comux`` logger and attach its handlers once.

    An application that configures logging itself keeps control: a stderr handler is only added
    when neither ``comux`` nor the root logger has one.
    """
    logger = logging.getLogger("comux")
    if isinstance(level, str):
        level = level.upper()
    logger.setLevel(level)
    formatter = logging.Formatter(_FORMAT)
    if log_file is not None:
        path = os.fspath(log_file)
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(path)
            for h in logger.handlers
        ):
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=20_000_000, backupCount=5, encoding="utf-8"
            )
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    if not logger.handlers and not logging.getLogger().handlers:
        stderr = logging.StreamHandler()
        stderr.setFormatter(formatter)
        logger.addHandler(stderr)
    return logger
