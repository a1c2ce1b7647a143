import re

from datasets.consent import departures, grant_problem
from datasets.models import Dataset
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Profile
from ledger.calldata import deposit_calls
from ledger.escrow import open_escrow
from ledger.models import Escrow, Stake
from nodes.models import Node

from . import queue
from .forms import ConsentForm, JobForm
from .models import Consent, Job
from .snapshot import job_snapshot

ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")


def home(request):
    jobs = Job.visible_to(request.user)[:10] if request.user.is_authenticated else []
    return render(request, "home.html", {"jobs": jobs})


@login_required
def job_list(request):
    return render(request, "jobs/list.html", {"jobs": Job.visible_to(request.user)})


@login_required
def job_create(request):
    form = JobForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        job = form.save(commit=False)
        job.owner = request.user
        job.save()
        if job.reward_per_round:
            open_escrow(job)
            messages.success(
                request, "Job created. Deposit its budget below; it starts once enough consenting nodes are online."
            )
        else:
            messages.success(request, "Job created. It starts when enough consenting nodes are online.")
        return redirect("jobs:detail", job.id)
    return render(request, "jobs/create.html", {"form": form})


def _visible_job_or_404(request, pk) -> Job:
    job = get_object_or_404(Job, pk=pk)
    if not job.can_view(request.user):
        raise Http404("No such job")
    return job


@login_required
def job_detail(request, pk):
    job = _visible_job_or_404(request, pk)
    my_nodes = [
        {
            "node": n,
            "consented": Consent.current(job, n),
            "eligible": job.node_is_eligible(n),
            "consent": Consent.latest(job, n),
            "datasets": Dataset.objects.filter(node=n, task=job.dataset),
        }
        for n in Node.objects.filter(owner=request.user)
    ]
    return render(
        request,
        "jobs/detail.html",
        {
            "job": job,
            "cohort": job.cohort.select_related("node"),
            "rounds": job.round_set.all(),
            "my_nodes": my_nodes,
            "departures": departures(job),
            "snapshot": job_snapshot(job),
            "payout_address": Profile.for_user(request.user).payout_address,
            "payouts": job.payouts.select_related("node", "round").order_by("round__number", "node_id"),
            "escrow": Escrow.objects.filter(job=job).first(),
            "escrow_funded": Escrow.lets_start(job),
            "my_stake": Stake.objects.filter(job=job, owner=request.user).first() if job.stake else None,
            "wallet_balance": _wallet_balance(request.user)
            if job.owner == request.user and job.status == Job.Status.WAITING and not Escrow.lets_start(job)
            else None,
        },
    )


def _wallet_balance(user) -> str:
    """The creator's wallet balance as the settlement worker last read it (web never reaches the chain)."""
    from ledger.wallets import wallet_for

    return wallet_for(user).tokens_text


@login_required
@require_POST
def job_fund(request, pk):
    """The creator deposits the job's budget from their wallet (done by the settlement worker)."""
    job = get_object_or_404(Job, pk=pk, owner=request.user)
    if job.status != Job.Status.WAITING or not job.reward_per_round:
        messages.error(request, "Only a waiting job with rewards takes a deposit.")
        return redirect("jobs:detail", job.id)
    open_escrow(job)
    queue.fund_job(job.id)
    messages.success(request, "Deposit requested: the job starts once it is on chain and enough nodes consent.")
    return redirect("jobs:detail", job.id)


@login_required
@require_POST
def job_consent(request, pk):
    job = _visible_job_or_404(request, pk)
    form = ConsentForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a node and whether to grant or revoke consent.")
        return redirect("jobs:detail", job.id)
    node = get_object_or_404(Node, pk=form.cleaned_data["node"], owner=request.user)
    grant = form.cleaned_data["grant"] == "yes"
    if grant and not job.node_is_eligible(node):
        messages.error(request, f"{node} does not meet this job's hardware needs.")
        return redirect("jobs:detail", job.id)
    dataset, problem = grant_problem(job, node, form.cleaned_data["dataset"], form.cleaned_data["expires_at"])
    if grant and problem:
        messages.error(request, problem)
        return redirect("jobs:detail", job.id)
    Consent.objects.create(
        job=job,
        node=node,
        granted=grant,
        by=request.user,
        dataset=dataset if grant else getattr(Consent.latest(job, node), "dataset", None),
        expires_at=form.cleaned_data["expires_at"] if grant else None,
    )
    if grant:
        covers = f" on “{dataset.name}”" if dataset else ""
        until = f" until {form.cleaned_data['expires_at']:%Y-%m-%d %H:%M}" if form.cleaned_data["expires_at"] else ""
        messages.success(request, f"{node} consents to train for “{job}”{covers}{until}.")
        placed = Stake.objects.filter(
            job=job, owner=request.user, status__in=[Stake.Status.STAKED, Stake.Status.RELEASED]
        )
        if job.stake > 0 and not placed.exists():
            messages.info(
                request,
                f"This job asks a stake of {job.stake} tokens per operator: "
                f"your stake of {job.stake} tokens is being placed from your wallet.",
            )
            queue.stake_for_consent(job.id, request.user.id)  # the settlement worker signs it
        if job.status == Job.Status.WAITING:
            transaction.on_commit(lambda: queue.start_job(job.id))
    else:
        messages.info(request, f"Consent of {node} revoked; it will not be picked for new rounds.")
    return redirect("jobs:detail", job.id)


@login_required
def job_fund_browser(request, pk):
    """The creator deposits from their own browser wallet. POST {address}: register the job on
    the ledger with that address as its creator (and, once deposited, find the deposit); GET: the
    state and the two transactions for the wallet to send (JSON)."""
    job = get_object_or_404(Job, pk=pk, owner=request.user)
    if not job.reward_per_round:
        return JsonResponse({"error": "this job pays no rewards"}, status=400)
    escrow = open_escrow(job)
    if request.method == "POST":
        address = (request.POST.get("address") or "").strip()
        if not ADDRESS_RE.fullmatch(address):
            return JsonResponse({"error": "address must be 0x followed by 40 hex digits"}, status=400)
        if escrow.registered_at is not None and escrow.funder.lower() != address.lower():
            return JsonResponse(
                {"error": f"the job is registered to {escrow.funder}; deposit from that wallet"}, status=409
            )
        if escrow.status == Escrow.Status.UNFUNDED:
            Escrow.objects.filter(pk=escrow.pk, registered_at__isnull=True).update(funder=address, browser_wallet=True)
            queue.fund_job(job.id)
        escrow.refresh_from_db()
    return JsonResponse(
        {
            "status": escrow.status,
            "registered": escrow.registered_at is not None,
            "creator": escrow.funder,
            "browser_wallet": escrow.browser_wallet,
            "budget_wei": str(escrow.budget_wei),
            "error": escrow.error,
            **(deposit_calls(escrow) or {"calls": []}),
        }
    )
