"""HTTP for the `ldm serve` tests: a JSON answer and its status, a 4xx or 5xx included."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def request_json(url: str, path: str, fields: dict | None = None) -> tuple[int, dict]:
    """GET `url + path`, or POST `fields` as JSON when given; returns (status, decoded answer)."""
    body = None if fields is None else json.dumps(fields).encode()
    request = urllib.request.Request(url + path, data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url: str, fields: dict) -> tuple[int, dict]:
    """POST /api/generate."""
    return request_json(url, "/api/generate", fields)
