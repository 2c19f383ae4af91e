"""Readers for the evaluation data, in the dev and the test formats of each dataset.

Every loader takes the data folder (the one holding `banking77/`, `clinc150/`, `qqp/` and
`contextual/`) and a split preference: ``"dev"`` reads the dev files, ``"test"`` the test
files, ``"auto"`` the dev files when they are there and the test files otherwise. The file a
set came from is recorded in its ``source`` so that every result names its data.

Formats accepted:

- BANKING77: ``train.csv`` (dev) or ``test.csv`` (test), columns ``text, category``.
- CLINC150: any ``*.json`` holding ``train`` and ``val`` / ``test`` (and ``oos_val`` /
  ``oos_test``) as ``[text, intent]`` lists (``dev.json``, ``test.json``, ``data_full.json``).
- QQP: ``val.csv`` (dev) or ``test.csv`` (test), columns ``question1, question2,
  is_duplicate``; ``gptcache_mock_data.json``: a list of ``{origin, similar}`` pairs.
- Contextual chains: every ``*.json`` list, each item either
  ``{"Main Query", "Main Query Response", "Follow-Up Query", "Follow Up Query Response"}``
  (dev) or ``{"u0", "u0_duplicate", "u1", "u1_duplicate"}`` (test).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Split = Literal["auto", "dev", "test"]


class DataError(ValueError):
    """A data file is missing or not in a format the evaluation reads."""


@dataclass(frozen=True)
class Utterance:
    text: str
    label: str


@dataclass(frozen=True)
class IntentSet:
    """Utterances labelled with intents: what S1, S1b and S2 read."""

    name: str
    source: str
    items: list[Utterance]


@dataclass(frozen=True)
class Clinc:
    source: str
    train: list[Utterance]
    lookups: list[Utterance]
    """`val` (dev) or `test` utterances of the 150 in-scope intents."""
    out_of_scope: list[Utterance]
    """`oos_val` or `oos_test`, labelled "oos"."""


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    duplicate: bool


@dataclass(frozen=True)
class PairSet:
    name: str
    source: str
    pairs: list[Pair]


@dataclass(frozen=True)
class Chain:
    """One first turn and its follow-up; paraphrases when the file has them (test format)."""

    main: str
    follow_up: str
    answer: str | None
    """The follow-up's response (dev format), None in the test format."""
    main_paraphrase: str | None = None
    follow_up_paraphrase: str | None = None
    source: str = ""


_DEV_CHAIN_KEYS = ("Main Query", "Follow-Up Query", "Follow Up Query Response")
_TEST_CHAIN_KEYS = ("u0", "u0_duplicate", "u1", "u1_duplicate")


def _pick(folder: Path, dev: str, test: str, split: Split) -> Path:
    """The file to read in `folder`: dev or test by name, per the split preference."""
    order = {"dev": [dev], "test": [test], "auto": [dev, test]}[split]
    for name in order:
        path = folder / name
        if path.is_file():
            return path
    raise DataError(f"{folder}: none of {', '.join(order)} found")


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON: {exc}") from exc


def load_banking77(data_dir: Path, split: Split = "auto") -> IntentSet:
    path = _pick(data_dir / "banking77", "train.csv", "test.csv", split)
    rows = _read_csv(path, ("text", "category"))
    items = [Utterance(r["text"], r["category"]) for r in rows if r["text"].strip()]
    return IntentSet("banking77", f"banking77/{path.name}", items)


def _pairs_of(raw: Any, key: str, path: Path) -> list[Utterance]:
    rows = raw.get(key)
    if not isinstance(rows, list):
        raise DataError(f"{path}: {key!r} is not a list of [text, intent]")
    out = []
    for row in rows:
        if not (isinstance(row, list | tuple) and len(row) == 2):
            raise DataError(f"{path}: {key!r} holds {row!r}, not [text, intent]")
        out.append(Utterance(str(row[0]), str(row[1])))
    return out


def load_clinc150(data_dir: Path, split: Split = "auto") -> Clinc:
    folder = data_dir / "clinc150"
    wanted = {"dev": ["val"], "test": ["test"], "auto": ["val", "test"]}[split]
    candidates = sorted(p for p in folder.glob("*.json") if p.name != "domains.json")
    for path in candidates:
        raw = _read_json(path)
        if not isinstance(raw, dict) or "train" not in raw:
            continue
        for part in wanted:
            if part in raw:
                oos_key = f"oos_{part}"
                return Clinc(
                    source=f"clinc150/{path.name}:{part}",
                    train=_pairs_of(raw, "train", path),
                    lookups=_pairs_of(raw, part, path),
                    out_of_scope=[
                        Utterance(u.text, "oos")
                        for u in (_pairs_of(raw, oos_key, path) if oos_key in raw else [])
                    ],
                )
    raise DataError(f"{folder}: no JSON file with 'train' and one of {', '.join(wanted)}")


def load_qqp(data_dir: Path, split: Split = "auto") -> PairSet:
    path = _pick(data_dir / "qqp", "val.csv", "test.csv", split)
    rows = _read_csv(path, ("question1", "question2", "is_duplicate"))
    pairs = []
    for r in rows:
        label = r["is_duplicate"].strip()
        if label not in ("0", "1"):
            raise DataError(f"{path}: is_duplicate must be 0 or 1, got {label!r}")
        pairs.append(Pair(r["question1"], r["question2"], label == "1"))
    return PairSet("qqp", f"qqp/{path.name}", pairs)


def load_gptcache_pairs(data_dir: Path) -> PairSet | None:
    """GPTCache's mock benchmark: every pair is a paraphrase (a positive); None if absent."""
    path = data_dir / "qqp" / "gptcache_mock_data.json"
    if not path.is_file():
        return None
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of {{origin, similar}}")
    pairs = []
    for item in raw:
        if not isinstance(item, dict) or "origin" not in item or "similar" not in item:
            raise DataError(f"{path}: item {item!r} lacks origin/similar")
        pairs.append(Pair(str(item["origin"]), str(item["similar"]), True))
    return PairSet("gptcache", f"qqp/{path.name}", pairs)


def _chain(item: Any, source: str, path: Path) -> Chain:
    if isinstance(item, dict) and all(k in item for k in _DEV_CHAIN_KEYS):
        return Chain(
            main=str(item["Main Query"]),
            follow_up=str(item["Follow-Up Query"]),
            answer=str(item["Follow Up Query Response"]),
            source=source,
        )
    if isinstance(item, dict) and all(k in item for k in _TEST_CHAIN_KEYS):
        return Chain(
            main=str(item["u0"]),
            follow_up=str(item["u1"]),
            answer=None,
            main_paraphrase=str(item["u0_duplicate"]),
            follow_up_paraphrase=str(item["u1_duplicate"]),
            source=source,
        )
    keys = sorted(item) if isinstance(item, dict) else type(item).__name__
    raise DataError(f"{path}: a chain with keys {keys} is in neither known format")


def load_chains(data_dir: Path) -> tuple[str, list[Chain]]:
    """Every chain of every JSON file in `contextual/`, in file-name then file order."""
    folder = data_dir / "contextual"
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise DataError(f"{folder}: no chain files (*.json)")
    chains: list[Chain] = []
    for path in paths:
        raw = _read_json(path)
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected a list of chains")
        chains.extend(_chain(item, f"contextual/{path.name}", path) for item in raw)
    return ",".join(f"contextual/{p.name}" for p in paths), chains


def load_traps(path: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The parametric traps file: (traps, controls), each item {stored, query, kind}."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object with 'traps' and 'controls'")
    out: list[list[dict[str, str]]] = []
    for key in ("traps", "controls"):
        items = raw.get(key)
        if not isinstance(items, list):
            raise DataError(f"{path}: {key!r} is not a list")
        for item in items:
            if not isinstance(item, dict) or not all(
                isinstance(item.get(f), str) and item[f].strip()
                for f in ("stored", "query", "kind")
            ):
                raise DataError(f"{path}: {key} item {item!r} needs stored, query and kind")
        out.append([{f: str(i[f]) for f in ("stored", "query", "kind")} for i in items])
    return out[0], out[1]
