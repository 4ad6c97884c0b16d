"""Helpers for the operations tests: the ``rota`` command in-process, Prometheus scrapes."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker import cli


@dataclass
class Result:
    code: int
    out: str
    err: str


def rota(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    *args: str,
    **env: str,
) -> Result:
    """``rota ARGS`` as an operator runs it, with only ROTA_REDIS_URL (and ``env``) set."""
    for name in [n for n in os.environ if n.startswith("ROTA_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ROTA_REDIS_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(f"ROTA_{name.upper()}", value)
    capsys.readouterr()
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from a metrics endpoint over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
