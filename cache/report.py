"""`semcache report`: where the tokens and dollars go, and what the cost guidance says to change."""

from __future__ import annotations

import math
from collections import defaultdict

import msgspec

from .entry import Usage
from .ledger import Ledger, UsageLine, UsageReport, window_clauses
from .pricing import PriceTable

SYSTEM_PROMPT_LIMIT = 500
"""Average system-prompt tokens above which an endpoint is flagged."""
MAX_TOKENS_SLACK = 2.0
"""max_tokens above this multiple of the observed p90 output is flagged."""
CHEAP_MODEL = "claude-haiku-5-5"


class Finding(msgspec.Struct, kw_only=True):
    kind: str
    endpoint: str
    message: str
    suggested_value: float | None = None


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def findings(
    ledger: Ledger,
    prices: PriceTable,
    *,
    since: float | None = None,
    until: float | None = None,
    cheap_model: str = CHEAP_MODEL,
) -> list[Finding]:
    # Only complete answers say how long answers are; failed and cut-off calls would skew it.
    where = [
        "kind = 'call'",
        "stop_reason IS NOT NULL",
        "stop_reason NOT LIKE 'error%'",
        "stop_reason != 'incomplete stream'",
        "endpoint != 'history-summary'",  # the server's own calls, sized by the server
    ]
    clauses, params = window_clauses(since, until)
    where += clauses
    rows = ledger.query(
        "SELECT endpoint, model, input_tokens, output_tokens, cache_creation_input_tokens,"
        " cache_read_input_tokens, cost_usd, max_tokens, system_tokens, reason,"
        " cache_creation_input_tokens + cache_read_input_tokens FROM ledger WHERE "
        + " AND ".join(where),
        tuple(params),
    )
    systems: dict[str, list[int]] = defaultdict(list)
    outputs: dict[str, list[int]] = defaultdict(list)
    limits: dict[str, list[int]] = defaultdict(list)
    big_spend: dict[str, float] = defaultdict(float)
    big_on_cheap: dict[str, float] = defaultdict(float)
    cheap_price = prices.price(cheap_model)
    cached_prompt: dict[str, int] = defaultdict(int)
    for endpoint, model, inp, out, cw, cr, cost, max_tokens, system_tokens, why, hit in rows:
        name = str(endpoint)
        if isinstance(system_tokens, int):
            systems[name].append(system_tokens)
        cached_prompt[name] += int(hit)  # type: ignore[call-overload]
        # An escalated call ran on a big model because the cheap tier could not answer.
        escalated = str(why).startswith("escalated")
        outputs[name].append(int(out))  # type: ignore[call-overload]
        if isinstance(max_tokens, int):
            limits[name].append(max_tokens)
        big_model = any(big in str(model) for big in ("sonnet", "opus"))
        if cheap_price is not None and big_model and not escalated:
            usage = Usage(
                input_tokens=int(inp),  # type: ignore[call-overload]
                output_tokens=int(out),  # type: ignore[call-overload]
                cache_creation_input_tokens=int(cw),  # type: ignore[call-overload]
                cache_read_input_tokens=int(cr),  # type: ignore[call-overload]
            )
            big_spend[name] += float(cost) if isinstance(cost, float | int) else 0.0
            big_on_cheap[name] += cheap_price.cost(usage)
    found: list[Finding] = []
    for endpoint, sizes in sorted(systems.items()):
        average = sum(sizes) / len(sizes)
        if average > SYSTEM_PROMPT_LIMIT:
            advice = (
                "trim it (it is already prompt-cached)"
                if cached_prompt[endpoint]
                else "trim it, or mark it for prompt caching (prompt_cache_min_chars)"
            )
            found.append(
                Finding(
                    kind="large-system-prompt",
                    endpoint=endpoint,
                    message=f"average system prompt is {average:.0f} tokens (over "
                    f"{SYSTEM_PROMPT_LIMIT}): {advice}",
                    suggested_value=None,
                )
            )
    for endpoint, observed in sorted(outputs.items()):
        if endpoint not in limits or not observed:
            continue
        p90 = percentile(observed, 90)
        limit = max(limits[endpoint])
        if limit > MAX_TOKENS_SLACK * max(p90, 1):
            suggested = max(16, math.ceil(p90 * 1.25))
            found.append(
                Finding(
                    kind="loose-max-tokens",
                    endpoint=endpoint,
                    message=f"max_tokens is {limit} but p90 output is {p90:.0f} tokens: "
                    f"set max_tokens to {suggested}",
                    suggested_value=suggested,
                )
            )
    for endpoint, spent in sorted(big_spend.items()):
        on_cheap = big_on_cheap[endpoint]
        saving = (1 - on_cheap / spent) * 100 if spent else 0.0
        found.append(
            Finding(
                kind="expensive-model",
                endpoint=endpoint,
                message=f"runs on Sonnet/Opus: ${spent:.4f} spent; the same tokens on "
                f"{cheap_model} would cost ${on_cheap:.4f} ({saving:.0f}% less)",
                suggested_value=round(on_cheap, 6),
            )
        )
    return found


def _table(title: str, lines: dict[str, UsageLine]) -> list[str]:
    header = f"{title:<24} {'calls':>7} {'hits':>7} {'hit%':>6} {'avg in':>8} {'avg out':>8} "
    header += f"{'tokens':>10} {'spend $':>11} {'saved $':>11}"
    out = [header, "-" * len(header)]
    for name, line in sorted(lines.items(), key=lambda item: -item[1].spend_usd):
        asked = line.calls + line.hits
        rate = f"{100 * line.hits / asked:.0f}" if asked else "-"
        avg_in = f"{line.avg_input_tokens:.0f}" if line.avg_input_tokens is not None else "-"
        avg_out = f"{line.avg_output_tokens:.0f}" if line.avg_output_tokens is not None else "-"
        out.append(
            f"{name[:24]:<24} {line.calls:>7} {line.hits:>7} {rate:>6} {avg_in:>8} {avg_out:>8} "
            f"{line.total_tokens:>10} {line.spend_usd:>11.4f} {line.saved_usd:>11.4f}"
        )
    return out


def render(report: UsageReport, found: list[Finding]) -> str:
    """The terminal report: per endpoint, per model, totals, then findings."""
    lines = _table("endpoint", report.endpoints)
    lines += ["", *_table("model", report.models)]
    lines += ["", *_table("total", {"all": report.totals})]
    lines += ["", "Findings:"]
    if not found:
        lines.append("  none: no endpoint breaks the cost guidance's rules")
    lines += [f"  [{f.kind}] {f.endpoint}: {f.message}" for f in found]
    return "\n".join(lines)
