"""Wallet and payouts: a participant's custodial wallet and faucet, their earnings per job and
round, and, for job creators, each job's budget, spent and returned."""

import csv
import re
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs import queue
from jobs.models import Job
from ledger import audit_results
from ledger.models import ContractDeployment, Escrow, Payout, Wallet, tokens_text
from ledger.wallets import next_faucet_at


def payouts_visible_to(user):
    """Staff see every payout; others those of jobs they own or to nodes they own."""
    qs = Payout.objects.select_related("job", "node", "round").order_by("-created_at", "-id")
    if user.is_staff:
        return qs
    return qs.filter(Q(job__owner=user) | Q(node__owner=user))


@login_required
def payouts(request):
    wallet = Wallet.objects.filter(user=request.user).first()
    if wallet is None:  # made by the settlement worker: only it holds the key that encrypts wallets
        queue.refresh_wallet(request.user.pk)
        wallet = Wallet.objects.filter(user=request.user).first()  # there already when tasks run in process
    earnings = Payout.objects.filter(node__owner=request.user).select_related("job", "node", "round")
    return render(
        request,
        "ledger/payouts.html",
        {
            "wallet": wallet,
            "faucet_on": settings.FAUCET_TOKENS > 0,
            "next_faucet_at": next_faucet_at(wallet) if wallet else None,
            "earnings": earnings.order_by("-created_at", "-id"),
            "earned": tokens_text(sum(int(p.amount_wei) for p in earnings if p.status == Payout.Status.CONFIRMED)),
            "escrows": Escrow.objects.filter(job__owner=request.user).select_related("job").order_by("-job_id"),
            "payouts": payouts_visible_to(request.user),
            "tokens": ContractDeployment.reward_tokens(),
        },
    )


@login_required
@require_POST
def wallet_faucet(request):
    """Ask for test tokens; the settlement worker (which holds the operator key) grants them."""
    queue.grant_test_tokens(request.user.pk)  # makes the wallet first if need be
    messages.success(request, "Test tokens requested: they appear here within a few seconds (reload).")
    return redirect("ledger:payouts")


@login_required
@require_POST
def wallet_refresh(request):
    queue.refresh_wallet(request.user.pk)
    return redirect("ledger:payouts")


# -- the admin audit page: `manage.py audit_chain`'s checks, run by the settler and read from the cache
def staff_only(view):
    """Staff only; everyone else (signed out included) gets a 404, as if the page did not exist."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not (request.user.is_authenticated and request.user.is_staff):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def tx_url(tx_hash: str) -> str:
    """The explorer's page of a transaction, or "" (no explorer set, or not a transaction hash)."""
    if settings.CHAIN_EXPLORER_URL and TX_HASH.fullmatch(tx_hash or ""):
        return f"{settings.CHAIN_EXPLORER_URL.rstrip('/')}/tx/{tx_hash}"
    return ""


def verdict(result: dict | None) -> str:
    if result is None:
        return "never"
    if result.get("error"):
        return "error"
    return "mismatch" if result["counts"]["mismatches"] else "ok"


@staff_only
def audit_jobs(request):
    escrows = list(Escrow.objects.select_related("job", "job__owner").order_by("-job__created_at", "-job_id"))
    results = audit_results.last_many(e.job_id for e in escrows)
    rows = [
        {"escrow": e, "job": e.job, "audit": results.get(e.job_id), "verdict": verdict(results.get(e.job_id))}
        for e in escrows
    ]
    return render(request, "ledger/audit_jobs.html", {"rows": rows})


def _round_label(number) -> str:
    return "job" if number is None else str(number)


@staff_only
def audit_job(request, job_id: int):
    job = get_object_or_404(Job, pk=job_id)
    result = audit_results.last(job.id)
    checks = [
        {**c, "round_label": _round_label(c["round"]), "tx_url": tx_url(c["tx_hash"])}
        for c in (result or {}).get("checks", [])
    ]
    rounds = list(dict.fromkeys(c["round_label"] for c in checks))
    round_filter = request.GET.get("round", "")
    only_mismatches = request.GET.get("only") == "mismatches"
    shown = [
        c
        for c in checks
        if (not round_filter or c["round_label"] == round_filter) and (not only_mismatches or not c["ok"])
    ]
    if request.GET.get("format") == "csv":
        return _audit_csv(job, result, shown)
    return render(
        request,
        "ledger/audit_job.html",
        {
            "job": job,
            "escrow": Escrow.objects.filter(job=job).first(),
            "audit": result,
            "verdict": verdict(result),
            "requested_at": audit_results.requested_at(job.id),
            "checks": shown,
            "rounds": rounds,
            "round_filter": round_filter,
            "only_mismatches": only_mismatches,
            "explorer": settings.CHAIN_EXPLORER_URL,
            "flags": job.flags.select_related("node", "round").order_by("round__number", "node_id"),
            "reputations": job.reputations.select_related("node").order_by("value", "node_id"),
        },
    )


def _csv_cell(value) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _audit_csv(job, result, checks) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-job-{job.id}.csv"'
    writer = csv.writer(response)
    writer.writerow(["job", "ran_at", "round", "check", "database", "chain", "result", "tx_hash", "tx_url"])
    ran_at = (result or {}).get("ran_at", "")
    for c in checks:
        writer.writerow(
            [
                _csv_cell(v)
                for v in (
                    job.id,
                    ran_at,
                    c["round_label"],
                    c["what"],
                    c["database"],
                    c["chain"],
                    "ok" if c["ok"] else "MISMATCH",
                    c["tx_hash"],
                    c["tx_url"],
                )
            ]
        )
    return response


@staff_only
@require_POST
def audit_run(request, job_id: int):
    """Queue the audit on the settler (the only process that reaches the chain)."""
    job = get_object_or_404(Job, pk=job_id)
    audit_results.mark_requested(job.id)
    if queue.audit_job(job.id):
        messages.success(request, f"Audit of job {job.id} queued: reload in a few seconds for its result.")
    else:
        messages.error(request, "Could not queue the audit (the task broker is unreachable); try again.")
    return redirect("ledger:audit_job", job_id=job.id)
