import re

from datasets.consent import departures, grant_problem
from datasets.models import Dataset
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Q
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import Profile
from ledger.calldata import deposit_calls
from ledger.escrow import open_escrow
from ledger.models import Escrow, Stake
from live.broadcast import job_update
from nodes.models import Node

from . import queue
from .forms import ConsentForm, JobForm
from .models import Consent, Job
from .snapshot import job_snapshot, recruiting_summary, status_event

ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")


def home(request):
    jobs = Job.visible_to(request.user)[:10] if request.user.is_authenticated else []
    return render(request, "home.html", {"jobs": jobs})


@login_required
def job_list(request):
    """Jobs the user may see, filtered by status (``?status=``) and searched by name (``?q=``)."""
    jobs = Job.visible_to(request.user).select_related("owner")
    status = request.GET.get("status", "")
    if status in Job.Status.values:
        jobs = jobs.filter(status=status)
    else:
        status = ""
    query = request.GET.get("q", "").strip()[:120]
    if query:
        jobs = jobs.filter(Q(name__icontains=query) | Q(description__icontains=query))
    return render(
        request,
        "jobs/list.html",
        {"jobs": jobs, "statuses": Job.Status.choices, "status": status, "q": query},
    )


def _published(request, job: Job) -> None:
    """A job starts recruiting: its escrow opens (rewards) and it starts once enough nodes consent."""
    if job.reward_per_round:
        open_escrow(job)
        messages.success(
            request, "Job published. Deposit its budget below; it starts once enough consenting nodes are online."
        )
    else:
        messages.success(request, "Job published. It starts when enough consenting nodes are online.")
    transaction.on_commit(lambda: queue.start_job(job.id))


@login_required
def job_create(request):
    form = JobForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        draft = request.POST.get("action") == "draft"
        job = form.save(commit=False)
        job.owner = request.user
        job.status = Job.Status.DRAFT if draft else Job.Status.WAITING
        job.save()
        if draft:
            messages.success(request, "Draft saved. Nobody sees it until you publish it.")
        else:
            _published(request, job)
        return redirect("jobs:detail", job.id)
    return render(request, "jobs/create.html", {"form": form})


def _owned_job_or_404(request, pk, *, lock: bool = False) -> Job:
    """The user's own job; anyone else's is 404 (nothing is told about it)."""
    jobs = Job.objects.select_for_update() if lock else Job.objects
    return get_object_or_404(jobs, pk=pk, owner=request.user)


def _terms_fixed(job: Job) -> str:
    """Why the job's terms may no longer change, or "" while they may."""
    if job.status not in (Job.Status.DRAFT, Job.Status.WAITING):
        return f"A {job.get_status_display().lower()} job cannot be edited; clone it into a new draft instead."
    escrow = Escrow.objects.filter(job=job).first()
    if escrow is not None and (escrow.status != Escrow.Status.UNFUNDED or escrow.registered_at is not None):
        return (
            "The budget's deposit is on chain (or under way) with the hash of these terms: "
            "they cannot change now. Clone the job into a new draft instead."
        )
    return ""


@login_required
def job_edit(request, pk):
    """The creator edits a draft, or a recruiting job whose deposit is not made yet."""
    with transaction.atomic():
        job = _owned_job_or_404(request, pk, lock=True)
        refused = _terms_fixed(job)
        if refused:
            messages.error(request, refused)
            return redirect("jobs:detail", job.id)
        form = JobForm(request.POST or None, instance=job, user=request.user)
        if request.method == "POST" and form.is_valid():
            job = form.save()
            escrow = Escrow.objects.select_for_update().filter(job=job).first()
            if escrow is not None:  # unfunded and unregistered (_terms_fixed): open it again on the new terms
                escrow.delete()
            if job.reward_per_round and job.status == Job.Status.WAITING:
                open_escrow(job)
            messages.success(request, "Job saved.")
            return redirect("jobs:detail", job.id)
    return render(request, "jobs/create.html", {"form": form, "job": job})


@login_required
@require_POST
def job_publish(request, pk):
    with transaction.atomic():
        job = _owned_job_or_404(request, pk, lock=True)
        if job.status != Job.Status.DRAFT:
            messages.error(request, "Only a draft can be published.")
            return redirect("jobs:detail", job.id)
        job.status = Job.Status.WAITING
        job.save(update_fields=["status"])
        _published(request, job)
    job_update(job.id, "status", status_event(job))
    return redirect("jobs:detail", job.id)


CLONED_FIELDS = [name for name in JobForm.Meta.fields if name != "name"]


@login_required
@require_POST
def job_clone(request, pk):
    """A new draft of the user's with the terms of a job they can see (a new seed)."""
    source = _visible_job_or_404(request, pk)
    job = Job(owner=request.user, name=f"{source.name} (copy)"[:120], status=Job.Status.DRAFT)
    for name in CLONED_FIELDS:
        setattr(job, name, getattr(source, name))
    if source.validator_id is not None and source.validator.owner_id != request.user.id:
        job.validator = None  # a validator is one of the creator's own nodes
    job.save()
    messages.success(request, f"Draft copied from “{source}”. Change what you like, then publish it.")
    return redirect("jobs:edit", job.id)


@login_required
@require_POST
def job_cancel(request, pk):
    """The creator cancels: a draft or recruiting job at once, a running one when its current
    round closes (orchestration.close_round opens no next round). Closed rounds are paid and the
    unspent budget goes back (ledger.settlement)."""
    with transaction.atomic():
        job = _owned_job_or_404(request, pk, lock=True)
        if job.status in (Job.Status.DRAFT, Job.Status.WAITING):
            job.status = Job.Status.CANCELLED
            job.finished_at = timezone.now()
            job.save(update_fields=["status", "finished_at"])
            messages.success(request, "Job cancelled.")
            if Escrow.objects.filter(job=job).exists():
                transaction.on_commit(lambda: queue.settle_job(job.id))  # a deposit made goes back
        elif job.status == Job.Status.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            job.save(update_fields=["cancel_requested"])
            messages.success(
                request,
                f"Cancelling: round {job.current_round} is the last one; the job ends when it closes, "
                "its closed rounds are paid and the rest of the budget comes back to you.",
            )
        elif job.cancel_requested:
            messages.info(request, "The job is being cancelled already: it ends when its current round closes.")
        else:
            messages.error(request, f"A {job.get_status_display().lower()} job cannot be cancelled.")
            return redirect("jobs:detail", job.id)
    job_update(job.id, "status", status_event(job))
    return redirect("jobs:detail", job.id)


def _visible_job_or_404(request, pk) -> Job:
    job = get_object_or_404(Job, pk=pk)
    if not job.can_view(request.user):
        raise Http404("No such job")
    return job


@login_required
def job_detail(request, pk):
    job = _visible_job_or_404(request, pk)
    is_owner = job.owner_id == request.user.id
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
            "recruiting": recruiting_summary(job),
            "can_edit": is_owner and not _terms_fixed(job),
            "can_cancel": is_owner and job.status in Job.OPEN_STATUSES and not job.cancel_requested,
        },
    )


def _wallet_balance(user) -> str:
    """The creator's wallet balance as the settlement worker last read it (web never reaches the chain)."""
    from ledger.models import Wallet

    wallet = Wallet.objects.filter(user=user).first()  # made by the settlement worker, which holds its key
    return wallet.tokens_text if wallet else "0"


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
    if job.status not in Job.OPEN_STATUSES or job.cancel_requested:
        state = "being cancelled" if job.cancel_requested else job.get_status_display().lower()
        messages.error(request, f"This job is {state}: it takes no consent changes any more.")
        return redirect("jobs:detail", job.id)
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
    if job.status == Job.Status.DRAFT or (request.method == "POST" and job.status != Job.Status.WAITING):
        return JsonResponse({"error": "only a recruiting job takes a deposit"}, status=409)
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
