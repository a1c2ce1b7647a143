from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import exchange
from .forms import NodeForm
from .models import Node


@login_required
def node_list(request):
    """The operator console: every node of the user, live (live.operator, /ws/operator/)."""
    from live.operator import operator_snapshot

    return render(
        request,
        "nodes/list.html",
        {"nodes": Node.objects.filter(owner=request.user), "console": operator_snapshot(request.user)},
    )


@login_required
def node_register(request):
    form = NodeForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        node = form.save(commit=False)
        node.owner = request.user
        node.apply_hardware(form.cleaned_data["hardware_json"])
        token = node.issue_token()
        node.save()
        return render(
            request, "nodes/token.html", {"node": node, "token": token, "server": request.build_absolute_uri("/")}
        )
    return render(request, "nodes/register.html", {"form": form})


@login_required
def node_detail(request, pk):
    node = get_object_or_404(Node, pk=pk, owner=request.user)
    reports = node.reports.select_related("round__job").order_by("-received_at")[:50]
    history = [{"at": s.at.isoformat(), **s.stats} for s in node.samples.order_by("at", "id")]
    return render(request, "nodes/detail.html", {"node": node, "reports": reports, "history": history})


@login_required
@require_POST
def node_new_token(request, pk):
    node = get_object_or_404(Node, pk=pk, owner=request.user)
    token = node.issue_token()
    node.save(update_fields=["token_id", "token_hash"])
    revoke_exchange(request, node)
    messages.info(request, "A new token was issued; the old one no longer works.")
    return render(
        request, "nodes/token.html", {"node": node, "token": token, "server": request.build_absolute_uri("/")}
    )


@login_required
@require_POST
def node_reset_key(request, pk):
    """The owner's way to let a node start over with a new signing key (its key file was lost, or
    its machine replaced): the next hello sets whatever key it brings."""
    node = get_object_or_404(Node, pk=pk, owner=request.user)
    Node.objects.filter(pk=node.pk).update(public_key="")
    revoke_exchange(request, node)
    messages.info(
        request, "The node's signing key was cleared; the next peer that says hello with its token sets a new one."
    )
    return redirect("nodes:detail", node.pk)


def revoke_exchange(request, node) -> None:
    """Whoever held the old token or key loses the exchange too: its user and connections go."""
    try:
        exchange.revoke(node.id)
    except exchange.ExchangeUnavailable as exc:
        messages.warning(
            request,
            f"The peers' exchange could not be told ({exc}); its old credentials work until the exchange restarts.",
        )
