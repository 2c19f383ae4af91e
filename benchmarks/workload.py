"""The FAQ-style workload the lookup benchmarks share: stored questions, and the exact,
paraphrased and unrelated questions that are looked up."""

from __future__ import annotations

import importlib.metadata
import socket

NAMESPACE = "bench"
VERBS = [
    "reset", "change", "update", "delete", "export", "verify", "recover", "rename",
    "share", "download", "upload", "archive", "restore", "transfer", "cancel", "renew",
    "upgrade", "link", "sync", "back up",
]  # fmt: skip
OBJECTS = [
    "password", "email address", "billing plan", "profile photo", "phone number",
    "shipping address", "invoice", "subscription", "api key", "workspace",
]  # fmt: skip
UNRELATED = [
    f"What is the {fact} of {place}?"
    for fact in ("population", "average rainfall", "tallest building", "oldest museum", "area")
    for place in (
        "Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Hanoi", "Quito", "Tbilisi",
    )
]  # fmt: skip


def questions() -> list[str]:
    return [f"How do I {verb} my {obj}?" for verb in VERBS for obj in OBJECTS]


def exact_variant(question: str) -> str:
    """Same normal form, other bytes: served by the exact path, no embedding."""
    return question.upper().rstrip("?") + "!!"


def paraphrase(question: str) -> str:
    rest = question.removeprefix("How do I ").rstrip("?")
    return f"Could you tell me how to {rest}, please?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"
