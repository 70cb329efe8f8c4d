"""Bounded JSON parsing: size and depth are refused with one line, before the parser runs."""

import pytest

from registry import jsonsafe
from registry.jsonsafe import JSONInputError


def test_plain_documents_parse():
    assert jsonsafe.loads(b'{"a": [1, 2, {"b": "]]]{{{"}]}', max_bytes=100) == {"a": [1, 2, {"b": "]]]{{{"}]}
    assert jsonsafe.loads('"x\\"[["', max_bytes=100) == 'x"[['


def test_deep_nesting_is_refused_without_recursion():
    doc = "[" * 100_000 + "]" * 100_000
    with pytest.raises(JSONInputError, match=r"^nested deeper than 64 levels$"):
        jsonsafe.loads(doc, max_bytes=10**6)
    assert jsonsafe.loads("[" * 64 + "]" * 64, max_bytes=1000) is not None


def test_brackets_inside_strings_do_not_count():
    doc = '{"k": "' + "[" * 10_000 + '"}'
    assert jsonsafe.loads(doc, max_bytes=10**6) == {"k": "[" * 10_000}


def test_size_is_checked_first():
    with pytest.raises(JSONInputError, match=r"^larger than 10 bytes$"):
        jsonsafe.loads(b"[" * 11, max_bytes=10)


@pytest.mark.parametrize("doc", ["NaN", '{"t": Infinity}', "[-Infinity]"])
def test_nan_and_infinity_are_refused(doc):
    with pytest.raises(JSONInputError, match="is not a valid JSON number"):
        jsonsafe.loads(doc, max_bytes=100)
    assert jsonsafe.loads(doc, max_bytes=100, allow_nan=True) is not None


def test_parser_errors_are_one_line():
    with pytest.raises(JSONInputError, match=r"^Expecting value at line 1 column 2$"):
        jsonsafe.loads("[", max_bytes=100)
    with pytest.raises(JSONInputError, match=r"^not UTF-8 text$"):
        jsonsafe.loads(b'"\xff"', max_bytes=100)


def test_the_number_of_objects_and_arrays_can_be_bounded():
    """What a parsed document costs in memory is mostly its containers: bound them too."""
    doc = "[" + "{}," * 1000 + "{}]"
    with pytest.raises(JSONInputError, match=r"^more than 1,000 objects and arrays$"):
        jsonsafe.loads(doc, max_bytes=10**6, max_containers=1000)
    assert len(jsonsafe.loads(doc, max_bytes=10**6, max_containers=1002)) == 1001
    assert jsonsafe.loads('["{}{}{}"]', max_bytes=100, max_containers=1) == ["{}{}{}"]


def test_a_long_string_costs_about_its_own_size_to_scan():
    """The depth scan's string pattern kept a backtracking frame per character: a 3.6 MB string
    took 470 MB (a 15 MB inference body, 1.7 GB and 3.6 s)."""
    import tracemalloc

    text = "the film was good, \\\"quoted\\\" [not a bracket] " * 80_000
    doc = ('{"inputs": "' + text + '"}').encode()
    tracemalloc.start()
    try:
        value = jsonsafe.loads(doc, max_bytes=len(doc))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == {"inputs": text.replace('\\"', '"')}
    assert peak < 10 * len(doc)  # the bytes, their text, the value; not a frame per byte
