"""The contract's words (account, number, user, group, status): parse input or say why not."""

from __future__ import annotations

import re

from worker.keys import GROUP_REF

DEFAULT_ACCOUNT = "default"
STATUSES = ("available", "unavailable", "away", "in_break")

_ACCOUNT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_USER = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
_GROUP = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PHONE_NOISE = str.maketrans("", "", "+ -.()")
_DIGITS = re.compile(r"[0-9]{6,15}")


class InvalidWord(ValueError):
    """Input that is not one of the contract's words; the message says which and why."""


def account(text: str) -> str:
    if not _ACCOUNT.fullmatch(text):
        raise InvalidWord(f"account {text!r} must match [A-Za-z0-9_.-]{{1,64}}")
    return text


def phone(text: str, what: str = "number") -> str:
    if 6 <= len(text) <= 15 and text.isascii() and text.isdigit():
        return text  # already clean: the usual case, without the translate and the regex
    digits = text.translate(_PHONE_NOISE)
    if not _DIGITS.fullmatch(digits):
        raise InvalidWord(
            f"{what} {text!r} must be 6-15 digits after +, spaces, dashes, dots, brackets"
        )
    return digits


def user(text: str) -> str:
    if not _USER.fullmatch(text):
        raise InvalidWord(f"user {text!r} must match [A-Za-z0-9_.@+-]{{1,128}}")
    return text


def group(text: str) -> str:
    if not _GROUP.fullmatch(text):
        raise InvalidWord(f"group {text!r} must match [A-Za-z0-9_.-]{{1,64}}")
    return text


def member(text: str) -> str:
    """A user, or ``group:NAME``."""
    if text.startswith(GROUP_REF):
        return GROUP_REF + group(text[len(GROUP_REF) :])
    return user(text)


def members(text: str) -> list[str]:
    """A comma-separated list of users and ``group:NAME`` entries; empty text is an empty list."""
    return [member(part.strip()) for part in text.split(",") if part.strip()]


def status(text: str) -> str:
    """``Available``, ``In Break``, ``in-break`` ... -> the canonical status."""
    canonical = re.sub(r"[\s-]+", "_", text.strip().lower())
    if canonical not in STATUSES:
        raise InvalidWord(f"status {text!r} must be one of {', '.join(STATUSES)}")
    return canonical


def mask(customer: str) -> str:
    """A phone number for logs: all but the last 4 digits hidden."""
    return "*" * max(len(customer) - 4, 0) + customer[-4:]
