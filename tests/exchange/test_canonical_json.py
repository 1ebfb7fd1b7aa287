"""common.canonical: orjson's bytes are the standard library's canonical bytes, so stored hashes still verify."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from common.canonical import canonical_json

scalars = st.none() | st.booleans() | st.integers() | st.text()
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5), max_leaves=30
)


def _standard(document, *, ascii_only: bool) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(documents)
def test_canonical_bytes_are_the_standard_librarys_for_any_document(document):
    assert canonical_json(document) == _standard(document, ascii_only=False)
    assert canonical_json(document, ascii_only=True) == _standard(document, ascii_only=True)


def test_the_cases_orjson_cannot_write_fall_back_to_the_standard_library():
    huge = {"amount": 2**70, "name": "数据"}
    assert canonical_json(huge) == '{"amount":1180591620717411303424,"name":"数据"}'.encode()
    assert canonical_json({"name": "数据"}, ascii_only=True) == b'{"name":"\\u6570\\u636e"}'
    escaped = '{"a":[true,null,"\\n\u2028\x7f"],"b":1}'.encode()
    assert canonical_json({"b": 1, "a": [True, None, "\n\u2028\x7f"]}) == escaped
