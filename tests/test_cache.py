"""Cache mechanics with a deterministic fake embedder and an injected clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cache import InvalidInput, NotFound, SemanticCache, Usage, VersionConflict
from cache.semantic import score
from tests.fakes import FakeClock, HashingEmbedder, count_searches

MakeCache = Callable[..., SemanticCache]
USAGE = Usage(input_tokens=1000, output_tokens=200)


def put(cache: SemanticCache, question: str, answer: str = "A", **kwargs: object) -> str:
    kwargs.setdefault("model", "claude-haiku-4-5")
    kwargs.setdefault("usage", USAGE)
    return cache.put(question, answer, **kwargs).id  # type: ignore[arg-type]


def test_exact_path_skips_the_embedder(make_cache: MakeCache, embedder: HashingEmbedder) -> None:
    cache = make_cache()
    put(cache, "How do I reset my password?", "Use the reset link.")
    calls = embedder.calls
    result = cache.lookup("  how do I RESET my password?!  ")
    assert result.hit and result.match == "exact" and result.similarity == 1.0
    assert result.entry is not None and result.entry.answer == "Use the reset link."
    assert embedder.calls == calls


def test_lookup_exact_answers_only_what_needs_no_model(
    make_cache: MakeCache, embedder: HashingEmbedder
) -> None:
    cache = make_cache()
    empty = cache.lookup_exact("anything", namespace="empty")
    assert empty is not None and not empty.hit  # an empty namespace is a certain miss
    put(cache, "How do I reset my password?", "Use the reset link.")
    repeat = cache.lookup_exact("how do i reset my password")
    assert repeat is not None and repeat.hit and repeat.match == "exact"
    assert cache.lookup_exact("how can i reset my password") is None  # needs the model
    assert embedder.calls == 1  # the put's embedding only
    with pytest.raises(InvalidInput):
        cache.lookup_exact("   ")
    _, rows = cache.stats()
    assert (rows["default"].exact_hits, rows["default"].lookups) == (1, 1)  # undecided: uncounted


def test_semantic_hit_and_miss(make_cache: MakeCache, embedder: HashingEmbedder) -> None:
    cache = make_cache(threshold=0.7)
    put(cache, "how do i reset my password", "Use the reset link.")
    calls = embedder.calls
    hit = cache.lookup("how can i reset my password")
    assert hit.hit and hit.match == "semantic"
    assert hit.similarity is not None and 0.7 <= hit.similarity < 1.0
    assert embedder.calls == calls + 1
    miss = cache.lookup("what are your business hours")
    assert not miss.hit and miss.entry is None
    assert miss.nearest_similarity is not None and miss.nearest_similarity < 0.7


def test_empty_namespace_misses_without_embedding(
    make_cache: MakeCache, embedder: HashingEmbedder
) -> None:
    cache = make_cache()
    result = cache.lookup("anything at all")
    assert not result.hit and result.nearest_similarity is None
    assert embedder.calls == 0


def test_threshold_override_including_zero_and_one(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.99)
    put(cache, "alpha beta gamma")
    assert not cache.lookup("alpha beta delta").hit
    assert cache.lookup("alpha beta delta", threshold=0.0).hit
    assert not cache.lookup("alpha beta delta", threshold=1.0).hit
    assert cache.lookup("alpha beta gamma", threshold=1.0).hit  # exact


def test_namespaces_are_hard_partitions(make_cache: MakeCache) -> None:
    cache = make_cache()
    put(cache, "how do i reset my password", "answer of A", namespace="tenant-a")
    for question in ("how do i reset my password", "how can i reset my password"):
        result = cache.lookup(question, namespace="tenant-b", threshold=0.0)
        assert not result.hit
    put(cache, "how do i reset my password", "answer of B", namespace="tenant-b")
    a = cache.lookup("how do i reset my password", namespace="tenant-a")
    b = cache.lookup("how do i reset my password", namespace="tenant-b")
    assert a.entry is not None and a.entry.answer == "answer of A"
    assert b.entry is not None and b.entry.answer == "answer of B"
    assert a.entry.id != b.entry.id


def test_namespace_is_not_embedded(make_cache: MakeCache, embedder: HashingEmbedder) -> None:
    cache = make_cache()
    put(cache, "where is my order", namespace="shop-42")
    cache.lookup("where is my parcel", namespace="shop-42")
    assert all("shop-42" not in text for text in embedder.texts)


def test_version_bump_invalidates_immediately(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.5)
    put(cache, "what is the price of the basic plan", "10 USD", namespace="shop")
    put(cache, "do you ship abroad", "Yes", namespace="shop")
    put(cache, "what is the price of the basic plan", "other ns", namespace="other")
    assert cache.version("shop") == 1
    version, invalidated = cache.set_version("shop")
    assert (version, invalidated) == (2, 2)
    assert not cache.lookup("what is the price of the basic plan", namespace="shop").hit
    assert not cache.lookup("price of the basic plan", namespace="shop", threshold=0.0).hit
    # other namespaces are untouched
    assert cache.lookup("what is the price of the basic plan", namespace="other").hit
    # new writes land in the new version and are served
    new_id = put(cache, "what is the price of the basic plan", "12 USD", namespace="shop")
    result = cache.lookup("what is the price of the basic plan", namespace="shop")
    assert result.entry is not None and result.entry.answer == "12 USD"
    assert result.catalog_version == 2 and result.entry.id == new_id


def test_versions_only_move_forward(make_cache: MakeCache) -> None:
    cache = make_cache()
    assert cache.set_version("ns", 5) == (5, 0)
    for bad in (5, 4, 1):
        with pytest.raises(VersionConflict):
            cache.set_version("ns", bad)
    assert cache.version("ns") == 5
    with pytest.raises(InvalidInput):
        cache.set_version("ns", "7")  # type: ignore[arg-type]


def test_purge_reclaims_invalidated_entries(make_cache: MakeCache) -> None:
    cache = make_cache()
    old_id = put(cache, "old question", namespace="shop")
    cache.flush()
    index_file = Path(cache._index_path(("shop", 1, "")))
    assert index_file.exists()
    cache.set_version("shop")
    assert cache.purge() == 1
    assert not index_file.exists()
    assert cache._store.get_entry(int(old_id, 16)) is None
    assert cache.purge() == 0


def test_ttl_expiry_with_injected_clock(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(default_ttl_s=100)
    short = cache.put("short lived", "S", model="m", usage=USAGE, ttl_s=10)
    default = cache.put("default lived", "D", model="m", usage=USAGE)
    assert short.expires_at == clock.now + 10
    assert default.expires_at == clock.now + 100
    clock.advance(9.9)
    assert cache.lookup("short lived").hit  # hits do not extend expiry
    clock.advance(0.2)
    assert not cache.lookup("short lived").hit
    nearest = cache.lookup("short lived", threshold=0.0).entry
    assert nearest is not None and nearest.id == default.id  # never the expired one
    with pytest.raises(NotFound):
        cache.get(short.id)
    assert cache.lookup("default lived").hit
    clock.advance(90)
    assert not cache.lookup("default lived").hit
    assert cache.purge() == 2
    assert cache.stats()[0].entries == 0
    cache.flush()
    assert not list((cache._dir / "index").glob("*.faiss"))  # empty groups leave no file


def test_no_ttl_means_never(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache()
    entry = cache.put("forever", "F", model="m", usage=USAGE)
    assert entry.expires_at is None
    clock.advance(10 * 365 * 86400)
    assert cache.lookup("forever").hit


def test_expired_nearest_neighbour_is_skipped(make_cache: MakeCache, clock: FakeClock) -> None:
    cache = make_cache(threshold=0.3)
    cache.put("alpha beta gamma delta", "expiring", model="m", usage=USAGE, ttl_s=5)
    cache.put("alpha beta zeta eta", "lasting", model="m", usage=USAGE)
    clock.advance(6)
    result = cache.lookup("alpha beta gamma delta epsilon")
    assert result.hit and result.entry is not None and result.entry.answer == "lasting"


def test_rewrite_of_same_question_overwrites(make_cache: MakeCache) -> None:
    cache = make_cache()
    first = put(cache, "Same question?", "old")
    second = put(cache, "same QUESTION", "new")
    assert first == second
    result = cache.lookup("same question")
    assert result.entry is not None and result.entry.answer == "new"
    assert cache.stats()[0].entries == 1


def test_get_and_delete(make_cache: MakeCache) -> None:
    cache = make_cache()
    entry_id = put(cache, "delete me", "bye")
    cache.lookup("delete me")
    cache.lookup("delete me")
    got = cache.get(entry_id)
    assert got.answer == "bye" and got.hit_count == 2 and got.last_hit_at is not None
    assert cache.delete(entry_id).id == entry_id
    assert not cache.lookup("delete me", threshold=0.0).hit
    for bad in (entry_id, "0" * 16, "not-an-id", "f" * 16):
        with pytest.raises(NotFound):
            cache.get(bad)
        with pytest.raises(NotFound):
            cache.delete(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"question": ""}, "empty"),
        ({"question": "?!"}, "empty"),
        ({"question": "x" * 3000}, "limit"),
        ({"answer": "   "}, "answer"),
        ({"namespace": "Not OK"}, "namespace"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -1}, "ttl_s"),
        ({"model": " "}, "model"),
    ],
)
def test_bad_writes_change_nothing(
    make_cache: MakeCache, kwargs: dict[str, object], message: str
) -> None:
    cache = make_cache()
    put(cache, "existing question", "kept")
    args: dict[str, object] = {"question": "a question", "answer": "an answer", **kwargs}
    question, answer = args.pop("question"), args.pop("answer")
    args.setdefault("model", "m")
    with pytest.raises(InvalidInput, match=message):
        cache.put(question, answer, usage=USAGE, **args)  # type: ignore[arg-type]
    total, _ = cache.stats()
    assert total.entries == 1 and total.writes == 1
    assert cache.lookup("existing question").hit


def test_embedder_failure_fails_open(make_cache: MakeCache, embedder: HashingEmbedder) -> None:
    cache = make_cache()
    put(cache, "a stored question")
    embedder.fail = True
    assert cache.lookup("a stored question").hit  # exact path needs no embedder
    result = cache.lookup("a different question")
    assert not result.hit
    total, _ = cache.stats()
    assert total.lookup_errors == 1 and total.misses == 1


def test_savings_are_counted_per_hit(make_cache: MakeCache) -> None:
    cache = make_cache()
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=100_000,
        cache_creation_input_tokens=10_000,
        cache_read_input_tokens=200_000,
    )
    entry = cache.put("priced", "P", model="claude-sonnet-4-5-20250929", usage=usage)
    # $3 in, $15 out, $3.75 cache write, $0.30 cache read per million tokens
    expected = 3.0 + 1.5 + 0.0375 + 0.06
    assert entry.cost_usd == pytest.approx(expected)
    first = cache.lookup("priced")
    cache.lookup("PRICED!")
    assert first.saved_usd == pytest.approx(expected)
    assert first.saved_tokens == 1_310_000
    total, rows = cache.stats()
    assert total.saved_usd == pytest.approx(2 * expected)
    assert total.saved_tokens == 2 * 1_310_000
    assert rows["default"].saved_cache_read_input_tokens == 400_000


def test_unknown_model_costs_null_not_error(make_cache: MakeCache) -> None:
    cache = make_cache()
    entry = cache.put("q", "a", model="some-future-model", usage=USAGE)
    assert entry.cost_usd is None
    result = cache.lookup("q")
    assert result.hit and result.saved_usd is None and result.saved_tokens == 1200
    assert cache.stats()[0].saved_usd == 0


def test_stats_per_namespace(make_cache: MakeCache) -> None:
    cache = make_cache()
    put(cache, "one", namespace="a")
    cache.lookup("one", namespace="a")
    cache.lookup("two", namespace="a")
    cache.lookup("one", namespace="b")
    total, rows = cache.stats()
    assert (total.lookups, total.hits, total.misses, total.entries) == (3, 1, 2, 1)
    assert total.hit_rate == pytest.approx(1 / 3)
    assert (rows["a"].lookups, rows["a"].exact_hits, rows["a"].misses) == (2, 1, 1)
    assert (rows["b"].lookups, rows["b"].hits, rows["b"].entries) == (1, 0, 0)


def test_concurrent_writes_and_lookups_lose_nothing(make_cache: MakeCache) -> None:
    cache = make_cache()
    errors: list[BaseException] = []
    n_writers, per_writer = 4, 50

    def writer(w: int) -> None:
        try:
            for i in range(per_writer):
                put(cache, f"writer {w} question {i}", f"answer {w}/{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(per_writer):
                cache.lookup(f"writer 0 question {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(n_writers)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.stats()[0].entries == n_writers * per_writer
    for w in range(n_writers):
        for i in range(per_writer):
            result = cache.lookup(f"writer {w} question {i}")
            assert result.entry is not None and result.entry.answer == f"answer {w}/{i}"


def test_explain_reports_the_evidence_without_side_effects(make_cache: MakeCache) -> None:
    cache = make_cache()
    put(cache, "alpha beta gamma delta", "first answer")
    put(cache, "alpha beta gamma epsilon", "second answer")
    put(cache, "alpha beta zeta eta", "first answer")
    before = cache.stats()[0]
    candidate = cache.explain("alpha beta gamma delta theta")
    assert candidate is not None and candidate.match == "semantic"
    assert candidate.entry.answer == "first answer"
    assert candidate.runner_up is not None
    assert candidate.margin == pytest.approx(candidate.nearest - candidate.runner_up)
    # "first answer" has two phrasings: the score is the mean of the nearest phrasing and the
    # centroid, + 0.05, less twice the margin's shortfall below 0.15
    matched = (candidate.nearest + candidate.answer_similarity) / 2
    expected = matched + 0.05 - 2 * max(0.0, 0.15 - candidate.margin)
    assert candidate.similarity == pytest.approx(min(max(matched, 0.999), expected))
    # two phrasings share "first answer": its centroid differs from the nearest phrasing
    assert candidate.answer_similarity != pytest.approx(candidate.nearest)
    assert cache.stats()[0].lookups == before.lookups  # explain counts nothing
    exact = cache.explain("Alpha beta gamma delta!")
    assert exact is not None and exact.match == "exact" and exact.accepts(1.0, 1.0)


def test_margin_rule_refuses_a_close_call(make_cache: MakeCache) -> None:
    strict = make_cache(threshold=0.5, margin=0.2)
    put(strict, "alpha beta gamma delta", "first answer")
    put(strict, "alpha beta gamma epsilon", "second answer")
    # nearly as close to both entries: right or wrong is a coin toss, so it is a miss
    result = strict.lookup("alpha beta gamma delta epsilon")
    assert not result.hit and result.margin is not None and result.margin < 0.2
    assert strict.lookup("alpha beta gamma delta epsilon", threshold=0.5).hit is False


def test_same_answer_neighbours_do_not_count_against_the_margin(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.5, margin=0.2)
    put(cache, "alpha beta gamma delta", "same answer")
    put(cache, "alpha beta gamma epsilon", "same answer")  # an alias of the first
    result = cache.lookup("alpha beta gamma delta epsilon")
    assert result.hit and result.entry is not None and result.entry.answer == "same answer"


def test_the_margin_moves_the_score_only_where_answers_have_several_phrasings(
    make_cache: MakeCache,
) -> None:
    single = make_cache(threshold=0.0, margin=0.0)
    put(single, "alpha beta gamma delta", "first answer")
    put(single, "alpha beta gamma epsilon", "second answer")
    one_each = single.explain("alpha beta gamma delta epsilon")
    assert one_each is not None and one_each.margin < 0.15
    # one phrasing per answer, as /v1/ask stores misses: the score is the similarity itself
    assert one_each.similarity == pytest.approx(one_each.answer_similarity)

    aliased = make_cache(threshold=0.0, margin=0.0)
    put(aliased, "alpha beta gamma delta", "first answer")
    put(aliased, "alpha beta gamma epsilon", "second answer")
    put(aliased, "alpha beta gamma epsilon zeta", "second answer")  # an alias
    close = aliased.explain("alpha beta gamma delta epsilon")
    assert close is not None and close.margin < 0.15
    # a close call where an answer has aliases costs twice its shortfall below 0.15; the
    # offset of 0.05 only when the answer served is the one with aliases
    offset = 0.05 if close.entry.answer == "second answer" else 0.0
    expected = close.matched + offset - 2 * (0.15 - close.margin)
    assert close.similarity == pytest.approx(expected)
    assert close.similarity < close.matched

    clear = aliased.explain("alpha beta gamma delta delta")
    assert clear is not None and clear.margin > 0.15
    assert clear.similarity == pytest.approx(clear.answer_similarity)  # no reward for a margin

    # an answer with aliases, far ahead: its similarity + 0.05
    alias_hit = aliased.explain("alpha beta gamma epsilon zeta zeta")
    assert alias_hit is not None and alias_hit.entry.answer == "second answer"
    assert alias_hit.margin > 0.15
    assert alias_hit.similarity == pytest.approx(alias_hit.matched + 0.05)


def test_the_offset_never_lifts_a_score_to_one() -> None:
    # 1 stays the threshold of "the same question" (or one that embeds identically)
    assert score(0.97, margin=0.5, weight=2.0, offset=0.05) == pytest.approx(0.999)
    assert score(0.9995, margin=0.5, weight=2.0, offset=0.05) == pytest.approx(0.9995)
    assert score(0.97, margin=0.05, weight=2.0, offset=0.05) == pytest.approx(0.82)


def test_a_wrong_report_raises_the_floor_on_similarity_not_on_the_moved_score(
    make_cache: MakeCache,
) -> None:
    cache = make_cache(threshold=0.8, margin=0.0)
    put(cache, "alpha beta gamma delta", "first answer")
    put(cache, "alpha beta gamma delta zeta", "first answer")  # an alias
    put(cache, "omega psi chi phi", "second answer")
    hit = cache.lookup("alpha beta gamma delta eta")
    assert hit.hit and hit.similarity is not None
    candidate = cache.explain("alpha beta gamma delta eta")
    assert candidate is not None and candidate.similarity > candidate.matched  # the offset
    report = cache.feedback(hit.lookup_id, correct=False)
    assert report.min_similarity == pytest.approx(candidate.matched + 0.01)
    assert report.min_similarity < 1.0  # a moved score of 0.999 would have shut the entry out
    # a question closer to the answer than the reported one is still served
    assert cache.lookup("alpha beta gamma delta zeta delta").hit
    assert not cache.lookup("alpha beta gamma delta eta").hit  # that question never again


def test_a_rival_beyond_the_neighbours_read_is_still_found(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.0)
    for i in range(20):  # more phrasings of one answer than the 16 neighbours read
        put(cache, f"alpha beta gamma variant{i}", "popular answer")
    put(cache, "alpha omega psi chi", "other answer")
    (group,) = cache._groups.values()
    searches = count_searches(group)
    candidate = cache.explain("alpha beta gamma")
    assert candidate is not None and candidate.entry.answer == "popular answer"
    assert candidate.runner_up is not None  # found by the wider search
    assert candidate.margin == pytest.approx(candidate.nearest - candidate.runner_up)
    assert searches == [16, 128]  # a small (flat) group reads wide only when it must

    many = [f"alpha beta gamma variant{i}" for i in range(140)]  # beyond the wider search too
    cache.put_many(many, "crowded answer", model="claude-haiku-4-5", usage=USAGE, namespace="big")
    put(cache, "omega psi chi phi", "other answer", namespace="big")
    crowded = cache.explain("alpha beta gamma", namespace="big")
    assert crowded is not None and crowded.runner_up is None
    # no rival among 128 phrasings: no penalty and no refusal, however alike they all are
    assert crowded.margin == pytest.approx(0.15)
    assert cache.lookup("alpha beta gamma", namespace="big", threshold=0.5).hit

    for i in range(3):
        put(cache, f"alpha beta gamma variant{i}", "the only answer", namespace="lone")
    only = cache.explain("alpha beta gamma", namespace="lone")
    assert only is not None and only.runner_up is None and only.margin == 1.0


def test_guards_veto_parametric_traps(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.0)
    put(cache, "refund of 5 eur", "Five euros are refunded in 3 days.")
    result = cache.lookup("refund of 50 eur")
    assert not result.hit and result.guard == "numbers differ"
    unguarded = make_cache(threshold=0.0, guards=False)
    assert unguarded.lookup("refund of 50 eur").hit  # the same store, guards off


def test_compare_uses_the_same_normalisation_and_guards(make_cache: MakeCache) -> None:
    cache = make_cache()
    same = cache.compare("Reset my PASSWORD?", "reset my password")
    assert same.similarity == 1.0 and same.accepts(1.0)
    trap = cache.compare("enable alerts", "disable alerts")
    assert trap.guard is not None and not trap.accepts(0.0)


def test_follow_ups_need_the_same_previous_turn(make_cache: MakeCache) -> None:
    cache = make_cache(threshold=0.5, margin=0.0)
    cache.put("can you expand on that", "about paris", model="m", usage=USAGE,
              context="what is the capital of france")  # fmt: skip
    same = cache.lookup("can you expand on that", context="What is the capital of France?")
    assert same.hit and same.match == "exact"
    # the joint key is close, but the first turns differ: another conversation, a miss
    other = cache.lookup("can you expand on that please", context="how do i bake bread")
    assert not other.hit and other.guard == "the previous turn differs"
    near = cache.lookup("can you expand on that please", context="what is the capital of france")
    assert near.hit and near.match == "semantic"
