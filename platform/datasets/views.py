from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render

from jobs.models import Job

from .consent import history_for_job, history_for_participant
from .forms import DatasetForm
from .models import Dataset


@login_required
def dataset_list(request):
    datasets = Dataset.objects.filter(owner=request.user).select_related("node")
    return render(request, "datasets/list.html", {"datasets": datasets})


@login_required
def dataset_create(request):
    form = DatasetForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        dataset = form.save(commit=False)
        dataset.owner = request.user
        dataset.save()
        messages.success(request, f"Dataset “{dataset.name}” declared for {dataset.node}.")
        return redirect("datasets:list")
    return render(request, "datasets/form.html", {"form": form, "dataset": None})


@login_required
def dataset_edit(request, pk):
    dataset = get_object_or_404(Dataset, pk=pk, owner=request.user)
    form = DatasetForm(request.POST or None, instance=dataset, owner=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Dataset “{dataset.name}” updated.")
        return redirect("datasets:list")
    return render(request, "datasets/form.html", {"form": form, "dataset": dataset})


@login_required
def my_consents(request):
    return render(request, "datasets/consents.html", {"rows": history_for_participant(request.user), "job": None})


@login_required
def job_consents(request, pk):
    job = get_object_or_404(Job, pk=pk)
    rows = history_for_job(job, request.user)
    if rows is None:
        raise Http404("No such job")
    return render(request, "datasets/consents.html", {"rows": rows, "job": job})
