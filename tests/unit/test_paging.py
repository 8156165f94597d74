"""Cursors of the admin lists, and how /openapi.json describes paging."""

from __future__ import annotations

import pytest

from aigwd.api.openapi import document
from aigwd.control import paging
from aigwd.errors import ApiError


def test_a_cursor_reads_back_only_in_its_own_list() -> None:
    cursor = paging.encode("missing", (1700000000.123456, 42))
    assert paging.decode("missing", cursor, (float, int)) == [1700000000.123456, 42]
    assert paging.decode("missing", None, (float, int)) is None
    for kind, forged in (("audit", cursor), ("missing", cursor + "x"), ("missing", "!!!"),
                         ("missing", paging.encode("missing", ("a", 1))),
                         ("missing", paging.encode("missing", (1.0, True)))):
        with pytest.raises(ApiError) as err:
            paging.decode(kind, forged, (float, int))
        assert err.value.status == 400 and "cursor is not one this list" in err.value.detail


def test_a_page_hands_out_a_cursor_only_when_more_rows_follow() -> None:
    rows = list(range(11))
    kept, cursor = paging.page("n", rows, 10, lambda r: (r,))
    assert kept == rows[:10] and paging.decode("n", cursor, (int,)) == [9]
    assert paging.page("n", rows[:10], 10, lambda r: (r,)) == (rows[:10], None)


@pytest.mark.parametrize("path", ["/admin/crashes", "/admin/missing-models", "/admin/audit", "/admin/users",
                                  "/admin/api-keys"])
def test_openapi_describes_limit_cursor_and_the_next_cursor_header(path: str) -> None:
    op = document()["paths"][path]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert params["cursor"]["schema"]["maxLength"] == 256
    assert "X-Next-Cursor" in op["responses"]["200"]["headers"]


def test_openapi_states_the_string_maxima() -> None:
    schemas = document()["components"]["schemas"]
    assert schemas["ChatBody"]["properties"]["model"]["maxLength"] == 256
    assert schemas["Credentials"]["properties"]["username"]["maxLength"] == 64
