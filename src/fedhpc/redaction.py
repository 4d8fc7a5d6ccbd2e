"""Secrets kept out of what a run writes down: ``experiment.yaml``, the ledger, and so the report.

A launcher's ``env`` carries credentials to the jobs (``HF_TOKEN``, ``WANDB_API_KEY``), and a
Globus Compute endpoint's ``user_endpoint_config`` or a ``worker_init`` line may too. Jobs get the
real values from the user's experiment file, read again at every run and resume; the run directory
records only that they were set, so copying a run directory or sending its report shares no
credential. Every ``env`` value is redacted, not only secret-looking ones: the name alone cannot tell.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "passphrase", "credential", "credentials",
                           "apikey"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"),
                           ("client", "secret")})
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)=")
_VALUE = re.compile(r"\"[^\"]*\"|'[^']*'|[^\s;,&|)]*")


def is_secret_name(name: str) -> bool:
    """Whether a key or variable is named like a credential: HF_TOKEN, api_key, clientSecret, DB_PASSWORD.

    Whole words only, so ``max_new_tokens`` (a count) is not one.
    """
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    parts = [part for part in re.split(r"[^a-z0-9]+", words) if part]
    return bool(_SECRET_WORDS.intersection(parts)) or any(pair in _SECRET_PAIRS for pair in zip(parts, parts[1:]))


def redact(document: Any) -> Any:
    """A copy of a JSON-like document with every ``env`` value and every secret-named key's value replaced.

    Strings keep their shape but lose the values of secret-named shell assignments
    (``export HF_TOKEN=...`` in a ``worker_init``). Idempotent, so a recorded document
    redacted once compares equal to a fresh one redacted now.
    """
    if isinstance(document, dict):
        return {key: _redact_entry(str(key), value) for key, value in document.items()}
    if isinstance(document, list):
        return [redact(item) for item in document]
    if isinstance(document, str):
        return _redact_assignments(document)
    return document


def _redact_entry(key: str, value: Any) -> Any:
    if is_secret_name(key):
        return REDACTED
    if key == "env" and isinstance(value, dict):
        return {name: REDACTED for name in value}
    return redact(value)


def _redact_assignments(text: str) -> str:
    pieces, done = [], 0
    for match in _ASSIGNMENT.finditer(text):
        if match.start() < done or not is_secret_name(match[1]):
            continue
        value = _VALUE.match(text, match.end())
        assert value is not None  # the pattern matches the empty string
        pieces += [text[done : match.end()], REDACTED]
        done = value.end()
    return "".join(pieces) + text[done:]
