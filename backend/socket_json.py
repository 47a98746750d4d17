"""The JSON codec of every Socket.IO and Engine.IO packet (python-socketio's `json=` option).

VITA's page sends ~125 `audio` events a second per session, each a JSON packet around a JSON
string; the standard library's decoder (through Engine.IO's wrapper, which builds a decoder per
call) cost more per packet than the rest of the event's dispatch (bench_vita.py section 2).
orjson reads big integers as floats instead of parsing thousands of digits, so the wrapper's
guard against them is not needed.
"""
from __future__ import annotations

import json

import orjson


def dumps(obj, **kwargs) -> str:
    try:
        return orjson.dumps(obj).decode("utf-8")
    except TypeError:  # what orjson cannot encode (integers over 64 bits): the standard library's verdict
        return json.dumps(obj, **kwargs)


def loads(s, **_):
    return orjson.loads(s)
