"""Loads ``lua/*.lua`` by file name into redis-py Script objects (EVALSHA, reload on NOSCRIPT).

Installed from a wheel, the scripts are the ``worker.lua`` package (pyproject maps it onto the
top-level ``lua/`` folder). A checkout, editable install included, has no such package
(setuptools' editable finder does not map a subpackage without ``__init__.py``), so there
they are read from ``lua/`` beside ``worker/``."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from redis.commands.core import Script

_CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "lua"


def source(name: str) -> str:
    """A script's text, from the ``worker.lua`` package or, in a checkout, ``lua/``."""
    try:
        folder: Traversable = resources.files("worker.lua")
    except ModuleNotFoundError:
        folder = _CHECKOUT_DIR
    return folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """Every script registered once on one client."""

    def __init__(self, client: Any) -> None:
        self.decide: Script = client.register_script(source("decide"))
        self.delconsumer: Script = client.register_script(source("delconsumer"))
        self.replay: Script = client.register_script(source("replay"))


def text(script: Script) -> str:
    """The script's source, to load it again (after SCRIPT FLUSH or a restart)."""
    body = script.script
    return body if isinstance(body, str) else bytes(body).decode()
