"""json.loads for untrusted bodies, refusing deep nesting before the C parser sees it.

The C decoder recurses once per nesting level and only stops at sys.getrecursionlimit(); py_ecc
(imported with web3 by the ledger, e.g. in the embedded demo that serves and settles in one
process, or a test run) raises that limit to 100000, so a body of a few hundred thousand '['
would overflow the C stack and kill the whole process instead of raising."""

import json
import re
from itertools import accumulate

MAX_DEPTH = 64
# A JSON string, or an unterminated one up to the end (so every character is scanned once).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def loads(raw, max_depth: int = MAX_DEPTH):
    """Like json.loads (raises ValueError on bad input), plus a nesting limit."""
    text = raw.decode() if isinstance(raw, (bytes, bytearray)) else raw
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text)
