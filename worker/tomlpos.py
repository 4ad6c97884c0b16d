"""Where each key and array element of a TOML document is written, for error messages.

tomllib gives values, not positions. This walks a document tomllib has already accepted and
records the line of every key path (``("accounts", "acme", "numbers", "1555", "members", 2)``),
so a validation error can name its line. It trusts the document to be valid TOML.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator

Path = tuple[str | int, ...]

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+) | (?P<comment>\#[^\n]*) | (?P<newline>\n)
  | (?P<string>\"\"\"(?:[^\\]|\\.)*?\"{3,5} | '''.*?'{3,5} | "(?:[^"\\\n]|\\.)*" | '[^'\n]*')
  | (?P<punct>\[\[|\]\]|[\[\]{}=,])
  | (?P<bare>[^\s\[\]{}=,\#"']+)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    """(kind, text, line) of every token but spaces and comments."""
    line = 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            yield kind, match.group(), line
        line += match.group().count("\n")


def _string(raw: str) -> str:
    value: str = tomllib.loads(f"x = {raw}")["x"]
    return value


class _Walker:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.at = 0
        self.lines: dict[Path, int] = {}

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "", 0)

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.at += 1
        return token

    def skip_newlines(self) -> None:
        while self.peek()[0] == "newline":
            self.at += 1

    def key(self, closing: str) -> Path:
        """A dotted key up to ``closing`` (``=`` or ``]``/``]]``), which is consumed."""
        parts: list[str | int] = []
        while True:
            kind, text, _ = self.take()
            if (kind == "punct" and text == closing) or kind in ("newline", "end"):
                return tuple(parts)
            if kind == "string":
                parts.append(_string(text))
            elif kind == "bare":
                parts.extend(part.strip() for part in text.split(".") if part.strip())

    def value(self, path: Path, line: int) -> None:
        self.lines.setdefault(path, line)
        kind, text, _ = self.take()
        if kind == "punct" and text == "[":
            index = 0
            while True:
                self.skip_newlines()
                kind, text, line = self.peek()
                if kind == "end":
                    return
                if kind == "punct" and text == "]":
                    self.take()
                    return
                if kind == "punct" and text == ",":
                    self.take()
                    continue
                self.value((*path, index), line)
                index += 1
        elif kind == "punct" and text == "{":
            while True:
                kind, text, line = self.peek()
                if kind in ("newline", "end"):
                    return
                if kind == "punct" and text == "}":
                    self.take()
                    return
                if kind == "punct" and text == ",":
                    self.take()
                    continue
                self.value((*path, *self.key("=")), line)

    def walk(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_newlines()
            kind, text, line = self.peek()
            if kind == "end":
                return self.lines
            if kind == "punct" and text in ("[", "[["):
                self.take()
                table = self.key("]" if text == "[" else "]]")
                self.lines.setdefault(table, line)
            else:
                self.value((*table, *self.key("=")), line)
            while self.peek()[0] not in ("newline", "end"):
                self.take()  # the rest of a value this walker does not split (a date-time)


def key_lines(text: str) -> dict[Path, int]:
    """Line (1-based) of every key path and array element of a valid TOML document."""
    return _Walker(text).walk()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, else of its nearest ancestor that is written down."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
