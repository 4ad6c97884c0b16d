"""The JSON API's request and response bodies, and its words as typed, checked strings.

Every id (here: users and members in bodies; worker.http.api: accounts, numbers, customers
and users in paths) is checked by worker.words, the validators the command line and
worker.client use, and normalised as they normalise it (``+44 7700 900123`` is
``447700900123``). The ``pattern`` each schema shows is the same form, so generated clients
and test tools know it; tests check the two agree."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from worker import messages, words
from worker.config import MAX_WHOLE

# The contract's forms ("Words"), as JSON Schema patterns (pydantic searches: anchored).
ACCOUNT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# 6-15 digits, with +, spaces, dashes, dots and brackets anywhere (dropped).
PHONE_PATTERN = r"^[+ ().-]*(?:[0-9][+ ().-]*){6,15}$"
USER_PATTERN = r"^[A-Za-z0-9_.@+-]{1,128}$"
MEMBER_PATTERN = r"^(?:group:[A-Za-z0-9_.-]{1,64}|[A-Za-z0-9_.@+-]{1,128})$"
# An activity's id, in the API: visible ASCII, so that its length in characters is its length
# in bytes and the schema states the worker's limit exactly.
MESSAGE_ID_PATTERN = rf"^[!-~]{{1,{messages.MAX_MESSAGE_ID_BYTES}}}$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)  # no inline flags: not in every dialect


# A status as words.status reads it, in ASCII: any case, spaces or tabs around, `in break`,
# `in-break` or `in_break`. (words.status also takes other Unicode spaces: the API does not.)
STATUS_PATTERN = (
    r"^[ \t]*(?:"
    + "|".join(map(_any_case, ("available", "unavailable", "away")))
    + f"|{_any_case('in')}(?:_|[ \\t-]+){_any_case('break')}"
    + r")[ \t]*$"
)


def customer_id(text: str) -> str:
    """A customer's number, normalised; its error quotes the customer masked, as the
    worker's dead letters and logs do."""
    return messages.customer(text, "customer")


User = Annotated[
    str,
    Field(
        pattern=USER_PATTERN,
        description="a CRM user id (e-mail addresses are valid ids)",
        examples=["alice@acme.example"],
    ),
    AfterValidator(words.user),
]
Member = Annotated[
    str,
    Field(
        pattern=MEMBER_PATTERN,
        description="a user, or `group:NAME` for a group's users in its order",
        examples=["alice", "group:sales"],
    ),
    AfterValidator(words.member),
]


def _integral(value: object) -> object:
    """JSON Schema's integer: 5 and 5.0 are one JSON number; "5" and true are none."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, Field(ge=0, le=MAX_WHOLE), BeforeValidator(_integral)]
Unset = SkipJsonSchema[None]  # a field's default when left out; not in the schema
WhenNobody = Literal["admin", "queue"]
State = Literal["open", "queued", "closed", "none"]


class RequestBody(BaseModel):
    """Request bodies: unknown fields are refused (a misspelt setting must not pass unseen)
    and values are taken as typed (``"5"`` is no capacity, ``1`` no flag)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # Fields that take null; any other left out keeps its default, and given as null is
    # refused (their schema shows no null: `X | Unset`).
    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _null_only_where_nullable(self) -> Self:
        for name in sorted(self.model_fields_set - self.nullable):
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null (leave it out instead)")
        return self


class Problem(BaseModel):
    """Any refusal: one line saying why."""

    detail: str = Field(examples=["a bearer token (ROTA_API_TOKEN) is required"])


# --- Presence -------------------------------------------------------------------------------


class PresenceSet(RequestBody):
    status: Annotated[str, AfterValidator(words.status)] = Field(
        pattern=STATUS_PATTERN,
        description="`available`, `unavailable`, `away` or `in_break`, any case; `In Break` "
        "and `in-break` are `in_break`",
        examples=["available", "In Break"],
    )


class Presence(BaseModel):
    account: str = Field(examples=["acme"])
    user: str = Field(examples=["alice@acme.example"])
    status: str = Field(description="the canonical status stored", examples=["in_break"])


# --- Activity on the inbound stream ---------------------------------------------------------


class Activity(RequestBody):
    message_id: Annotated[str, Field(pattern=MESSAGE_ID_PATTERN)] | Unset = Field(
        default=None,
        description="the CRM's id of this activity, 1-256 visible ASCII characters: the same "
        "id again is the same activity (a retry does nothing twice)",
        examples=["crm-7f3a"],
    )


class UserActivity(Activity):
    user: User


class Accepted(BaseModel):
    """The activity is on the account's inbound stream; a worker acts on it in order with the
    messages before and after it."""

    inbound_id: str = Field(
        description="the inbound entry's id (decisions it causes carry it as `inbound_id`)",
        examples=["1718000000000-0"],
    )


# --- Conversations --------------------------------------------------------------------------


class Conversation(BaseModel):
    """The same as `rota conversation show`."""

    user: str | None = Field(
        description="who holds it while open; null while queued; else the owner; else null",
        examples=["bob"],
    )
    state: State = Field(examples=["open"])
    replied: bool = Field(description="whether its user has replied since it opened")
    reply_deadline: int | None = Field(
        description="unix ms by which its user must reply (open, not replied, reply_timeout_s "
        "on); else null",
        examples=[1718000120000],
    )
    tried: list[str] = Field(description="the users who held it since it opened")


# --- Number settings ------------------------------------------------------------------------


class NumberSettings(BaseModel):
    """The product sheet's popup (Assign Unknown Chat, Assign Round Robin User, Assign Chat To
    Online User Only, the admin) and the conversation settings of one number."""

    assign_unknown: bool = Field(description="new customers get a user (off: nobody)")
    members: list[str] = Field(
        description="the Round Robin users and `group:NAME` entries, in rotation order",
        examples=[["carol", "group:sales"]],
    )
    access: list[str] = Field(
        description="users and `group:NAME` entries who use the number (empty: everyone)"
    )
    online_only: bool = Field(description="only `available` users get new chats")
    admin: str | None = Field(
        description="the fallback user (null: the account's admin)", examples=["boss"]
    )
    capacity: int = Field(description="open conversations per user; 0: no limit")
    owner_online_only: bool = Field(
        description="a returning customer goes to the owner only while the owner could take a "
        "new chat (or already holds it)"
    )
    when_nobody: WhenNobody = Field(
        description="nobody eligible: the admin gets the chat, or it waits in the queue"
    )
    queue_max_wait_s: int = Field(
        description="seconds a queued chat waits before the admin gets it; 0: no limit"
    )
    reply_timeout_s: int = Field(
        description="seconds a user has to reply before the chat moves on; 0: off"
    )


class NumberSettingsChange(RequestBody):
    """What to change; what is left out stays. A number without settings is created with
    the contract's defaults for the rest (assign unknown and online only on), as `rota number
    set` does."""

    nullable = frozenset({"admin"})

    assign_unknown: bool | Unset = Field(default=None, description="Assign Unknown Chat")
    members: list[Member] | Unset = Field(
        default=None,
        description="Assign Round Robin User: users and `group:NAME` entries, in order "
        "(replaces the list)",
        examples=[["alice", "bob", "group:sales"]],
    )
    access: list[Member] | Unset = Field(
        default=None, description="who uses the number (replaces the set; empty: everyone)"
    )
    online_only: bool | Unset = Field(default=None, description="Assign Chat To Online User Only")
    admin: User | None = Field(
        default=None,
        description="the number's admin; null clears it (the account's admin applies)",
        examples=["boss"],
    )
    capacity: Whole | Unset = Field(default=None, description="0: no limit", examples=[5])
    owner_online_only: bool | Unset = None
    when_nobody: WhenNobody | Unset = None
    queue_max_wait_s: Whole | Unset = Field(default=None, description="0: no limit")
    reply_timeout_s: Whole | Unset = Field(default=None, description="0: off", examples=[120])

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"assign_unknown": True, "members": ["alice", "bob"], "online_only": True},
                {"capacity": 5, "when_nobody": "queue", "reply_timeout_s": 120},
            ]
        }
    )


class NumberSettingsWritten(BaseModel):
    settings: NumberSettings = Field(description="all of the number's settings, as written")
    warnings: list[str] = Field(
        description="members that access leaves out (they will not get chats)",
        examples=[["member carol has no access to 15550001000 and will not get chats"]],
    )


# --- number show ----------------------------------------------------------------------------


class Next(BaseModel):
    user: str = Field(description="who a new chat would get now (empty: nobody)")
    reason: str = Field(examples=["round_robin"])


class ShownSettings(BaseModel):
    assign_unknown: bool
    online_only: bool
    capacity: int
    owner_online_only: bool
    when_nobody: WhenNobody
    queue_max_wait_s: int
    reply_timeout_s: int
    presence_ttl_s: int = Field(description="the account's")
    admin: str | None = Field(description="the number's own")
    effective_admin: str | None = Field(description="the number's, else the account's")
    whatsapp_phone_number_id: str | None = Field(
        description="Meta's id of the number: how POST /whatsapp finds its account"
    )


class NumberShown(BaseModel):
    """The same as `rota number show`."""

    account: str
    number: str
    settings: ShownSettings
    members: list[str] = Field(description="as written")
    access: list[str]
    expanded_members: list[str] = Field(description="the rotation: groups expanded, in order")
    presence: dict[str, str] = Field(description="each rotation user's status")
    eligible_now: list[str]
    cursor: int
    next: Next
    known_customers: int
    open: dict[str, int] = Field(description="open conversations per user (none: left out)")
    at_capacity: list[str]
    queue: int = Field(description="customers waiting for a user")
    oldest_wait_ms: int | None = Field(description="how long the first of them has waited")
    chats_today: dict[str, int] = Field(description="new chats today (UTC) per rotation user")


# --- Stats and decisions --------------------------------------------------------------------


class NumberStats(BaseModel):
    eligible_now: list[str]
    next: Next
    cursor: int
    queue: int
    oldest_wait_ms: int | None


class AccountStats(BaseModel):
    """The same as `rota stats ACCOUNT`'s `account`."""

    account: str
    queue: int = Field(description="customers waiting, on all the account's numbers")
    oldest_wait_ms: int | None = Field(description="the longest wait (null: nobody waits)")
    day: str = Field(description="the UTC day chats_today counts", examples=["2024-06-10"])
    chats_today: dict[str, int] = Field(description="new chats today per user")
    numbers: dict[str, NumberStats]


class Decision(BaseModel):
    """One entry of the decisions stream (see "Decisions published"): a decision, or a
    conversation event (a change of user without a new message)."""

    id: str = Field(description="the entry's id on the decisions stream")
    account: str
    number: str
    customer: str
    message_id: str = Field(description="the message's id; empty for a conversation event")
    inbound_id: str = Field(description="the inbound entry decided")
    user: str = Field(description="empty for unknown_disabled, no_admin and queued")
    reason: str = Field(examples=["round_robin"])
    at: int = Field(description="unix ms of the decision")
    previous: str = Field(description="an event's: who had the conversation (else empty)")
    event_id: str = Field(description="an event's unique id (else empty)")


class Decisions(BaseModel):
    decisions: list[Decision] = Field(description="newest first")
    scanned: int = Field(description="entries of the decisions stream looked at")
    searched_all: bool = Field(
        description="the whole stream was looked at (false: the limit or the scan bound "
        "stopped the search, older matches may exist)"
    )
