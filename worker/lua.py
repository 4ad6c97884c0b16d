"""Loads ``lua/*.lua`` by file name into redis-py Script objects (EVALSHA, reload on NOSCRIPT)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from redis.commands.core import Script

_SOURCE_DIR = Path(__file__).resolve().parent.parent / "lua"


def source(name: str) -> str:
    """A script's text: from the checkout's ``lua/`` or, installed, the ``worker.lua`` package."""
    path = _SOURCE_DIR / f"{name}.lua"
    if path.is_file():
        return path.read_text()
    return resources.files("worker.lua").joinpath(f"{name}.lua").read_text()


class Scripts:
    """Every script registered once on one client."""

    def __init__(self, client: Any) -> None:
        self.assign: Script = client.register_script(source("assign"))
        self.delconsumer: Script = client.register_script(source("delconsumer"))
        self.replay: Script = client.register_script(source("replay"))
