"""Prometheus metrics of the worker and the API, in one place so names stay consistent.

Each process exposes its own registry: the API at ``GET /metrics``, the worker on
``[worker] metrics_port``. Counters count since the process started (Prometheus handles
restarts); labels are low-cardinality names only — never customer ids or addresses.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_RUNS = Counter(
    "recocamp_job_runs_total",
    "Job runs by job and outcome (ok, error, skipped).",
    ["job", "outcome"],
)
JOB_SECONDS = Histogram(
    "recocamp_job_duration_seconds",
    "Duration of job runs.",
    ["job"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)
EMAILS = Counter(
    "recocamp_emails_total",
    "E-mails by campaign and outcome (enqueued, sent, rejected, failed, retried, cancelled).",
    ["campaign", "outcome"],
)
DECISIONS = Counter(
    "recocamp_decisions_total",
    "Campaign decisions by campaign and reason (skips included).",
    ["campaign", "reason"],
)
TRAIN_SECONDS = Gauge("recocamp_train_duration_seconds", "Duration of the last training run.")
MODEL_INFO = Gauge("recocamp_live_model", "The live model version (value 1).", ["version"])


def show_live_model(version: str | None) -> None:
    """``recocamp_live_model``: 1 for ``version`` alone (none while no model is live)."""
    MODEL_INFO.clear()
    if version is not None:
        MODEL_INFO.labels(version).set(1)


LEADER = Gauge("recocamp_scheduler_leader", "1 while this worker schedules jobs, else 0.")
CAMPAIGN_FILES_BROKEN = Gauge(
    "recocamp_campaign_files_broken",
    "Campaign files that failed the worker's last check: left out at start, their last good "
    "version kept on a reload.",
)

# --- the shop API (route = the route's path template, never a raw path with ids or tokens) ---
HTTP_REQUESTS = Counter(
    "recocamp_http_requests_total",
    "API requests by method, route and status code.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "recocamp_http_request_duration_seconds",
    "API request duration by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
API_ANSWERS = Counter(
    "recocamp_api_next_best_offer_total",
    "Next-best-offer answers: cached (nothing committed since), checked (store unchanged for "
    "the customer), computed.",
    ["outcome"],
)
API_EVENTS = Counter(
    "recocamp_api_purchase_events_total",
    "Orders posted to the events endpoint by outcome.",
    ["outcome"],
)
API_REVIEW_EVENTS = Counter(
    "recocamp_api_review_events_total",
    "Reviews posted to the events endpoint by outcome (new, repeat, conflict, erased).",
    ["outcome"],
)
PRIVACY_REQUESTS = Counter(
    "recocamp_privacy_requests_total", "Exports and erasures by channel.", ["kind", "via"]
)
WEBHOOK_EVENTS = Counter(
    "recocamp_webhook_events_total",
    "Provider webhook events by outcome: accepted, duplicate, rejected (a wrong field: left "
    "out and answered 200, so it shows here, not in the provider's failed-post list).",
    ["provider", "outcome"],
)
