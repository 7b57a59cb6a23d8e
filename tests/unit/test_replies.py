"""The lifecycle reads redis-py's replies through ``lifecycle.replies``: the bytes form of
a bytes client, and a clear error for a decoding client."""

from __future__ import annotations

import pytest

from taskplane.lifecycle.replies import data, fields, optional, scored, text, text_fields


def test_a_bytes_reply_passes_unchanged() -> None:
    assert data(b"x") == b"x"
    assert optional(None) is None and optional(b"") == b""
    assert text("é".encode()) == "é"
    assert fields({b"state": b"PENDING"}) == {b"state": b"PENDING"}
    assert text_fields({b"last_tick": b"1.5"}) == {"last_tick": "1.5"}
    assert fields({}) == {}


def test_a_decoding_clients_reply_is_refused() -> None:
    for read in (data, optional, text):
        with pytest.raises(TypeError, match="bytes client"):
            read("x")
    with pytest.raises(TypeError, match="bytes client"):
        fields({b"state": "PENDING"})


def test_scored_ranges_in_either_protocols_form() -> None:
    assert scored([(b"a", 2.0), (b"b", 1.0)]) == [(b"a", 2.0), (b"b", 1.0)]  # RESP2
    assert scored([[b"a", 2.0]]) == [(b"a", 2.0)]  # RESP3
    assert scored([]) == []
    with pytest.raises(TypeError, match="without scores"):
        scored([b"a", b"b"])
