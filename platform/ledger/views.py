from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import render

from ledger.models import ContractDeployment, Payout


def payouts_visible_to(user):
    """Staff see every payout; others those of jobs they own or to nodes they own."""
    qs = Payout.objects.select_related("job", "node").order_by("-created_at", "-id")
    if user.is_staff:
        return qs
    return qs.filter(Q(job__owner=user) | Q(node__owner=user))


@login_required
def payouts(request):
    return render(
        request,
        "ledger/payouts.html",
        {
            "payouts": payouts_visible_to(request.user),
            "tokens": ContractDeployment.reward_tokens(),
        },
    )
