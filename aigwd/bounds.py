"""The longest string of each kind the gateway accepts, and the size of an admin list's page.

Anything a client or an admin sends that is stored or logged has a maximum here, so the checks,
the OpenAPI document and the README quote the same figures. Past a maximum the answer is a 400
that names the field and the maximum.
"""

from __future__ import annotations

from .errors import ApiError, bad_request

MAX_MODEL_NAME = 256  # `model` of a chat, OCR or OpenAI request
MAX_CLIENT_ID = 64  # X-Client-ID, and each client ID an API key is bound to
MAX_USERNAME = 64  # login form, user admin commands, config [[users]]
MAX_SUBJECT = 128  # who an API key acts as
MAX_PASSWORD = 1024  # longer passphrases buy nothing and cost hashing time
MAX_TOKEN = 4096  # a refresh token in the form (the gateway's own are far shorter)
MAX_ARG_TEXT = 1024  # any other string argument of an admin command (reasons, ids, lists)
MAX_CURSOR = 256  # an admin list's cursor, as handed out

# A batch's metadata, as OpenAI bounds it: 16 pairs, keys of 64 characters, values of 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
# POST /v1/batches: room for the largest metadata written with every character escaped (a character outside
# the BMP is a pair of \uXXXX: 12 bytes) and the other fields; the small-body limit would refuse valid ones.
BATCH_CREATE_MAX_BYTES = 128 * 1024

LIST_LIMIT_DEFAULT = 100  # rows of an admin list when no `limit` is given
LIST_LIMIT_MAX = 1000  # the largest `limit` accepted


def check_length(field: str, value: str, maximum: int) -> str:
    """`value` when it holds at most `maximum` characters; else a 400 naming the field."""
    if len(value) > maximum:
        raise too_long(field, maximum)
    return value


def too_long(field: str, maximum: int) -> ApiError:
    return bad_request(f"{field} is longer than {maximum} characters")
