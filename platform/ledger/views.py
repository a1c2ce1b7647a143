"""Wallet and payouts: a participant's custodial wallet and faucet, their earnings per job and
round, and, for job creators, each job's budget, spent and returned."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from jobs import queue
from ledger.models import ContractDeployment, Escrow, Payout, tokens_text
from ledger.wallets import next_faucet_at, wallet_for


def payouts_visible_to(user):
    """Staff see every payout; others those of jobs they own or to nodes they own."""
    qs = Payout.objects.select_related("job", "node", "round").order_by("-created_at", "-id")
    if user.is_staff:
        return qs
    return qs.filter(Q(job__owner=user) | Q(node__owner=user))


@login_required
def payouts(request):
    wallet = wallet_for(request.user)
    earnings = Payout.objects.filter(node__owner=request.user).select_related("job", "node", "round")
    return render(
        request,
        "ledger/payouts.html",
        {
            "wallet": wallet,
            "faucet_on": settings.FAUCET_TOKENS > 0,
            "next_faucet_at": next_faucet_at(wallet),
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
    wallet_for(request.user)
    queue.grant_test_tokens(request.user.pk)
    messages.success(request, "Test tokens requested: they appear here within a few seconds (reload).")
    return redirect("ledger:payouts")


@login_required
@require_POST
def wallet_refresh(request):
    queue.refresh_wallet(request.user.pk)
    return redirect("ledger:payouts")
