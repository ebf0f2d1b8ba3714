"""What the routes take, checked in one place, and how they say no.

Each input type refuses what pgrag cannot store or look up with a 422 that names the field and
the reason, and declares the same rule in the OpenAPI schema, so that a request valid by the
schema is valid to the route:

    Text            a string PostgreSQL can store: no NUL character, no lone surrogate
    PathText        a server path: no lone surrogate (pgrag refuses one with a NUL itself)
    Integer         JSON Schema's integer: 30 or 30.0, never "30" or true (use StrictBool
                    for booleans: never 0 or "yes")
    CollectionName  1-64 letters, digits, '_', '.' or '-' (pgrag.store.collections.NAME)
    JobId           a job's id: a positive bigint
    LastEventId     an answer stream's event id, `<ms>-<seq>` (pgrag.runtime.streaming)

Every refusal's body is a `Refusal` ({"detail": "why"}), but 422's, which lists the fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from pgrag.runtime.streaming import ENTRY_ID
from pgrag.store.collections import NAME

BIGINT_MAX = 2**63 - 1


class Refusal(BaseModel):
    detail: str = Field(description="Why the request was refused")


def _unicode(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:  # JSON may escape half a surrogate pair; UTF-8 cannot hold it
        raise ValueError("not valid Unicode: a lone surrogate (\\ud800-\\udfff)") from None
    return value


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters (\\u0000) are not allowed")
    return _unicode(value)


# The pattern tells schema readers about NUL (a JSON schema cannot express lone surrogates);
# the validator says why in its own words.
Text = Annotated[
    str, AfterValidator(_storable), Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})
]
# A server path: a NUL in it is a path outside the roots (400, saying which roots).
PathText = Annotated[str, AfterValidator(_unicode)]


def _number(value: object) -> object:
    # Pydantic's lax int takes "30" and true too; a float with no fractional part goes on to
    # it (and becomes an int), one with a fraction is refused there.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


Integer = Annotated[int, BeforeValidator(_number)]
CollectionName = Annotated[str, StringConstraints(pattern=NAME.pattern)]
JobId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="The job's id (a bigint)")]
# Optional, but never null: a header is absent or a string (the schema says no more).
LastEventId = Annotated[
    Annotated[str, StringConstraints(pattern=ENTRY_ID)] | SkipJsonSchema[None],
    Header(
        description="Resume after this event: the `id` of an event of this answer's stream",
        examples=["1765000000000-0"],
    ),
]


def refusal(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI response of a refusal: a Refusal body, and `headers` ({name: what it says})."""
    response: dict[str, Any] = {"model": Refusal, "description": description}
    if headers:
        response["headers"] = {
            name: {"description": what, "schema": {"type": "string"}}
            for name, what in headers.items()
        }
    return response


# Of every route that reads a JSON body (api/limits.py bounds every body).
BODY_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: refusal("A body that is not JSON (or not UTF-8)"),
    413: refusal("A body over its size limit (PGRAG_MAX_JSON_KB)"),
}
