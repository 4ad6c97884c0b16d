"""The contract's words and inbound-message parsing, without Redis."""

from __future__ import annotations

import pytest

from worker import words
from worker.messages import MAX_MESSAGE_ID_BYTES, Message, Rejection, parse

INBOUND_ID = "1700000000000-0"
LIMIT = 64 * 1024


def fields(**values: str | bytes) -> dict[bytes, bytes]:
    """Stream fields as the worker reads them (bytes); ``from_`` is ``from``."""
    return {
        name.rstrip("_").encode(): value if isinstance(value, bytes) else value.encode()
        for name, value in values.items()
    }


def rejected(entry: dict[bytes, bytes], max_bytes: int = LIMIT) -> Rejection:
    result = parse(INBOUND_ID, entry, max_bytes)
    assert isinstance(result, Rejection), result
    return result


def accepted(entry: dict[bytes, bytes], max_bytes: int = LIMIT) -> Message:
    result = parse(INBOUND_ID, entry, max_bytes)
    assert isinstance(result, Message), result
    return result


# words.phone


@pytest.mark.parametrize(
    ("given", "digits"),
    [
        ("15550001000", "15550001000"),
        ("+1 555 000 1000", "15550001000"),
        ("+1 (555) 000-1000", "15550001000"),
        ("+44.7700.900123", "447700900123"),
        ("123456", "123456"),  # 6 digits: the shortest
        ("123456789012345", "123456789012345"),  # 15: the longest
        ("+1-234-567-890-123-45", "123456789012345"),
    ],
)
def test_phone_drops_plus_spaces_dashes_dots_brackets(given: str, digits: str) -> None:
    assert words.phone(given) == digits


@pytest.mark.parametrize(
    "given",
    [
        "",
        "12345",  # 5 digits
        "1234567890123456",  # 16 digits
        "+(1) 2-3.4 5",  # 5 digits once the noise is dropped
        "555-CALL-NOW",
        "15550001000x1",
        "1555/0001000",
        "15550001000\n",
        "\uff11\uff12\uff13\uff14\uff15\uff16\uff17",  # fullwidth digits are not 0-9
        "\u0661\u0662\u0663\u0664\u0665\u0666\u0667",  # nor are Arabic-Indic ones
    ],
)
def test_phone_rejects_anything_but_6_to_15_digits(given: str) -> None:
    with pytest.raises(words.InvalidWord, match="6-15 digits"):
        words.phone(given)


def test_phone_error_names_the_field() -> None:
    with pytest.raises(words.InvalidWord, match=r"^from '12' must be"):
        words.phone("12", "from")


# words.account, words.user, words.group, words.member(s)


@pytest.mark.parametrize("given", ["acme", "a", "Acme-2.eu_west", "x" * 64, "default"])
def test_account_accepts_its_form(given: str) -> None:
    assert words.account(given) == given


@pytest.mark.parametrize(
    "given", ["", "x" * 65, "acme corp", "acme{x}", "acme:eu", "acmé", "acme\n", "a/b", "a*"]
)
def test_account_rejects_other_text(given: str) -> None:
    with pytest.raises(words.InvalidWord, match="account"):
        words.account(given)


@pytest.mark.parametrize(
    "given", ["alice", "alice@example.com", "+447700900123", "a.b-c_d", "u" * 128, "B0b"]
)
def test_user_accepts_its_form_including_email_addresses(given: str) -> None:
    assert words.user(given) == given


@pytest.mark.parametrize(
    "given", ["", "u" * 129, "al ice", "bob|x", "a,b", "group:x", "bob\n", "zoë", "a/b"]
)
def test_user_rejects_other_text(given: str) -> None:
    with pytest.raises(words.InvalidWord, match="user"):
        words.user(given)


@pytest.mark.parametrize("given", ["sales", "night-shift.eu_2", "g" * 64])
def test_group_accepts_its_form(given: str) -> None:
    assert words.group(given) == given


@pytest.mark.parametrize("given", ["", "g" * 65, "sales team", "a:b", "a@b", "a+b"])
def test_group_rejects_other_text(given: str) -> None:
    with pytest.raises(words.InvalidWord, match="group"):
        words.group(given)


def test_member_is_a_user_or_a_group_reference() -> None:
    assert words.member("alice@example.com") == "alice@example.com"
    assert words.member("group:sales") == "group:sales"


@pytest.mark.parametrize("given", ["group:", "group:sales team", "group:a@b", "sales team"])
def test_member_rejects_bad_users_and_group_names(given: str) -> None:
    with pytest.raises(words.InvalidWord):
        words.member(given)


def test_members_splits_on_commas_trims_and_skips_empty_parts() -> None:
    assert words.members(" alice, group:sales ,,bob,") == ["alice", "group:sales", "bob"]
    assert words.members("") == []
    assert words.members(" , ") == []


def test_members_keeps_order_and_duplicates() -> None:
    assert words.members("bob,alice,bob") == ["bob", "alice", "bob"]


def test_members_rejects_a_bad_entry() -> None:
    with pytest.raises(words.InvalidWord, match="al ice"):
        words.members("bob,al ice")


# words.status


@pytest.mark.parametrize(
    ("given", "status"),
    [
        ("available", "available"),
        ("Available", "available"),
        ("AVAILABLE", "available"),
        ("  available ", "available"),
        ("Unavailable", "unavailable"),
        ("away", "away"),
        ("Away", "away"),
        ("in_break", "in_break"),
        ("In Break", "in_break"),
        ("in-break", "in_break"),
        ("IN-BREAK", "in_break"),
        ("in  break", "in_break"),
        ("In_Break", "in_break"),
    ],
)
def test_status_is_case_insensitive_and_accepts_spaces_and_dashes(given: str, status: str) -> None:
    assert words.status(given) == status


@pytest.mark.parametrize("given", ["", "busy", "online", "inbreak", "in break now", "avail"])
def test_status_rejects_other_words(given: str) -> None:
    with pytest.raises(words.InvalidWord, match="available, unavailable, away, in_break"):
        words.status(given)


# words.mask


@pytest.mark.parametrize(
    ("customer", "masked"),
    [
        ("447700900123", "********0123"),
        ("123456", "**3456"),
        ("1234", "1234"),
        ("123", "123"),
        ("", ""),
    ],
)
def test_mask_hides_all_but_the_last_four_digits(customer: str, masked: str) -> None:
    assert words.mask(customer) == masked


# messages.parse


def test_parse_gives_a_message_with_normalised_numbers() -> None:
    entry = fields(account="acme", number="+1 (555) 000-1000", from_="+44 7700 900123",
                   message_id="wamid.X")  # fmt: skip

    assert accepted(entry) == Message(
        inbound_id=INBOUND_ID,
        account="acme",
        number="15550001000",
        customer="447700900123",
        message_id="wamid.X",
    )


@pytest.mark.parametrize("account", [None, ""])
def test_message_without_account_belongs_to_default(account: str | None) -> None:
    entry = fields(number="15550001000", from_="447700900123", message_id="m1")
    if account is not None:
        entry[b"account"] = account.encode()

    assert accepted(entry).account == "default"


@pytest.mark.parametrize("message_id", [None, ""])
def test_message_without_message_id_is_identified_by_its_inbound_id(
    message_id: str | None,
) -> None:
    entry = fields(account="acme", number="15550001000", from_="447700900123")
    if message_id is not None:
        entry[b"message_id"] = message_id.encode()

    assert accepted(entry).message_id == INBOUND_ID


def test_other_fields_are_not_parsed_even_when_not_utf8() -> None:
    entry = fields(number="15550001000", from_="447700900123", text=b"\xff\xfe", name="Zoë")

    assert accepted(entry).customer == "447700900123"


@pytest.mark.parametrize(
    ("entry", "missing"),
    [
        (fields(from_="447700900123"), "number required"),
        (fields(number="15550001000"), "from required"),
        (fields(account="acme"), "number and from required"),
        (fields(number="", from_="447700900123"), "number required"),
        (fields(number="15550001000", from_=""), "from required"),
    ],
)
def test_missing_or_empty_number_or_from_is_missing_field(
    entry: dict[bytes, bytes], missing: str
) -> None:
    assert rejected(entry) == Rejection("missing_field", missing)


@pytest.mark.parametrize(
    ("entry", "mentions"),
    [
        (fields(account="acme corp", number="15550001000", from_="447700900123"), "account"),
        (fields(account="x" * 65, number="15550001000", from_="447700900123"), "account"),
        (fields(number="12345", from_="447700900123"), "number"),
        (fields(number="1234567890123456", from_="447700900123"), "number"),
        (fields(number="15550001000", from_="12345"), "from"),
        (fields(number="15550001000", from_="1234567890123456"), "from"),
        (fields(number="15550001000", from_="44 7700 90012 ext 3"), "from"),
        (fields(number=b"\xff\xfe\x00", from_="447700900123"), "number is not UTF-8"),
        (fields(number="15550001000", from_=b"\xc3\x28"), "from is not UTF-8"),
        (fields(account=b"\xe9", number="15550001000", from_="447700900123"), "account"),
        (fields(number="15550001000", from_="447700900123", message_id=b"\x80"), "message_id"),
    ],
)
def test_field_not_in_its_form_is_invalid_field(entry: dict[bytes, bytes], mentions: str) -> None:
    rejection = rejected(entry)

    assert rejection.error == "invalid_field"
    assert mentions in rejection.detail
    assert "\n" not in rejection.detail


def test_an_invalid_from_is_quoted_masked_in_the_detail() -> None:
    rejection = rejected(fields(number="15550001000", from_="4477009001234567"))

    assert rejection == Rejection(
        "invalid_field",
        "from '************4567' must be 6-15 digits after +, spaces, dashes, dots, brackets",
    )


def test_message_id_up_to_256_bytes_is_accepted() -> None:
    message_id = "w" * MAX_MESSAGE_ID_BYTES
    entry = fields(number="15550001000", from_="447700900123", message_id=message_id)

    assert MAX_MESSAGE_ID_BYTES == 256
    assert accepted(entry).message_id == message_id


@pytest.mark.parametrize("message_id", ["w" * 257, "é" * 129])  # 257 and 258 bytes
def test_message_id_over_256_bytes_is_invalid_field(message_id: str) -> None:
    entry = fields(number="15550001000", from_="447700900123", message_id=message_id)

    rejection = rejected(entry)

    assert rejection.error == "invalid_field"
    assert "message_id" in rejection.detail


def test_entry_over_the_size_limit_is_too_large() -> None:
    entry = fields(number="15550001000", from_="447700900123", text="x" * 1000)
    size = sum(len(k) + len(v) for k, v in entry.items())

    assert accepted(entry, max_bytes=size).number == "15550001000"
    assert rejected(entry, max_bytes=size - 1) == Rejection(
        "too_large", f"{size} bytes, limit {size - 1}"
    )


def test_too_large_is_decided_before_anything_else() -> None:
    entry = fields(number="bad", text="x" * 500)  # also missing from, and a bad number

    assert rejected(entry, max_bytes=256).error == "too_large"
