"""The per-job control-plane token: created once per job (a Secret in Kubernetes,
an in-memory value in local mode), handed to every worker, checked on Register."""

from __future__ import annotations

import hmac
import secrets


def new_token() -> str:
    """A fresh random token (URL-safe text, 256 bits)."""
    return secrets.token_urlsafe(32)


def tokens_match(expected: str, presented: str) -> bool:
    """Constant-time comparison, so the check leaks nothing through timing."""
    return hmac.compare_digest(expected.encode(), presented.encode())
