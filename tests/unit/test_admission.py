"""The submission headers, parsed once into RequestHeaders: defaults, an API key's bounds, X-Resolution."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from aigwd.api.admission import read_headers, with_resolution
from aigwd.auth.apikeys import ApiKey
from aigwd.errors import ApiError
from aigwd.headers import RequestHeaders
from aigwd.priority import Priority


def key(highest: Priority, clients: tuple[str, ...] = ("billing", "batch")) -> ApiKey:
    return ApiKey(id="k", key_hash="h", subject="svc", client_ids=list(clients), max_priority=highest)


def refused(headers: dict[str, str], api_key: ApiKey | None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        read_headers(CIMultiDict(headers), api_key)
    return caught.value


def test_without_a_key_the_headers_decide() -> None:
    assert read_headers(CIMultiDict({"X-Client-ID": "app"}), None) == RequestHeaders("app", Priority.NORMAL)
    assert read_headers(CIMultiDict({"X-Client-ID": "app", "X-Priority": " High "}), None) \
        == RequestHeaders("app", Priority.HIGH)
    assert refused({}, None).status == 400
    assert "X-Priority" in refused({"X-Client-ID": "app", "X-Priority": "urgent"}, None).detail


@pytest.mark.parametrize(("highest", "default"), [(Priority.HIGH, Priority.NORMAL),
                                                  (Priority.NORMAL, Priority.NORMAL),
                                                  (Priority.LOW, Priority.LOW)])
def test_a_keys_default_class_is_normal_or_its_highest_if_lower(highest: Priority, default: Priority) -> None:
    assert read_headers(CIMultiDict(), key(highest)) == RequestHeaders("billing", default)


def test_a_key_refuses_a_class_above_its_highest_and_other_clients() -> None:
    assert read_headers(CIMultiDict({"X-Priority": "high"}), key(Priority.HIGH)).priority is Priority.HIGH
    assert read_headers(CIMultiDict({"X-Priority": "low"}), key(Priority.NORMAL)).priority is Priority.LOW
    error = refused({"X-Priority": "high"}, key(Priority.NORMAL))
    assert error.status == 403 and "at most normal priority" in error.detail
    assert refused({"X-Client-ID": "someone_else"}, key(Priority.NORMAL)).status == 403
    assert read_headers(CIMultiDict({"X-Client-ID": "batch"}), key(Priority.NORMAL)).client_id == "batch"
    # A key bound to no client takes the header, which is then required.
    assert read_headers(CIMultiDict({"X-Client-ID": "any"}), key(Priority.LOW, ())).client_id == "any"
    assert refused({}, key(Priority.LOW, ())).status == 400


def test_resolution_is_the_header_or_the_default() -> None:
    parsed = RequestHeaders("app", Priority.NORMAL)
    assert with_resolution(parsed, CIMultiDict(), "large").resolution == "large"
    assert with_resolution(parsed, CIMultiDict({"X-Resolution": " Gundam"}), "large") \
        == RequestHeaders("app", Priority.NORMAL, "gundam")
    with pytest.raises(ApiError) as caught:
        with_resolution(parsed, CIMultiDict({"X-Resolution": "4k"}), "large")
    assert caught.value.status == 400 and "X-Resolution" in caught.value.detail
