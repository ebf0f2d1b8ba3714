"""The CPU as Linux describes it (/proc/cpuinfo): its model name and feature flags, which
decide the precision the encoders run at (`pgrag.inference.openvino`) and name every CPU
figure the benches print."""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path


@cache
def _fields() -> dict[str, str]:
    """The first processor's fields (empty where /proc/cpuinfo is not)."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
        return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}
    return {}


def model_name() -> str:
    return _fields().get("model name", "")


def flags() -> frozenset[str]:
    return frozenset(_fields().get("flags", "").split())
