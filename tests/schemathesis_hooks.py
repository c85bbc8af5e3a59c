"""Narrow exclusions for the contract test (tests/contract.rs, scripts/schemathesis.sh).

schemathesis's positive_data_acceptance check expects every request that its JSON Schema
allows to be accepted. Three rules of this API cannot be written in JSON Schema, because they
relate a value to another field, to stored data or to an earlier request; the OpenAPI
document states each in its descriptions. A 422 that enforces exactly one of them is
dropped, and only that:

- PUT /v1/skus/{sku}: `starts_at` must come before `ends_at` (a rule across two fields).
- POST /v1/reservations: `quantity` must be at most the SKU's per-user limit (stored data;
  the schema can only say 1 to 1,000,000).
- POST /v1/reservations: an `Idempotency-Key` already used for this SKU and user with
  another quantity is refused with `idempotency_key_reused` (an earlier request; 422 as the
  IETF Idempotency-Key draft prescribes for a key reused with another payload).
- POST /v1/carts: the same per line, and one more: each SKU at most once in a cart (a rule
  across the items of an array, which `uniqueItems` cannot state for one member of an
  object), a line's `quantity` at most its SKU's per-user limit, a key reused with other
  lines.

And one refusal of stored state that is a 410, not a 422: a SKU retired (by the stateful
phase's own `DELETE /v1/skus/{sku}`) is not loaded, reserved or put in a cart again
(`sku_retired`), since the ledger keeps its record under its id.

Every other failure, of every check, stays a failure.
"""

from datetime import datetime
import re

import schemathesis

PER_USER = re.compile(r"at most (\d+) per user for this SKU")


def _problem(response):
    try:
        body = response.json()
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def _moment(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _window_reversed(body):
    starts, ends = body.get("starts_at"), body.get("ends_at")
    if not isinstance(starts, str) or not isinstance(ends, str):
        return False
    try:
        return _moment(starts) >= _moment(ends)
    except ValueError:
        return False


def _over_the_limit(body, detail):
    match = PER_USER.search(detail)
    quantity = body.get("quantity", 1)
    return (
        match is not None
        and isinstance(quantity, (int, float))
        and quantity > int(match.group(1))
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a 422 that enforces one of the rules above, or a 410 of a
    SKU the run itself retired."""
    if failure.code != "ST202":
        return True
    problem = _problem(response)
    if response.status_code == 410:
        return problem.get("code") != "sku_retired"
    if response.status_code != 422:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    if failure.operation == "PUT /v1/skus/{sku}":
        return not (problem.get("code") == "invalid_sku_spec" and _window_reversed(body))
    if failure.operation == "POST /v1/reservations":
        if problem.get("code") == "idempotency_key_reused":
            return False
        detail = problem.get("detail", "")
        return not (problem.get("code") == "invalid_quantity" and _over_the_limit(body, detail))
    if failure.operation == "POST /v1/carts":
        code = problem.get("code")
        if code == "idempotency_key_reused":
            return False
        if code == "invalid_cart" and "appears twice" in problem.get("detail", ""):
            return False
        return not (code == "invalid_quantity" and _a_line_over_the_limit(body, problem))
    return True


def _a_line_over_the_limit(body, problem):
    """Whether every line the problem names asks more than the limit its detail names."""
    lines = problem.get("lines") or []
    asked = {
        line.get("sku"): line.get("quantity", 1)
        for line in body.get("lines", [])
        if isinstance(line, dict)
    }
    return bool(lines) and all(
        _over_the_limit({"quantity": asked.get(line.get("sku"), 1)}, line.get("detail", ""))
        for line in lines
    )
