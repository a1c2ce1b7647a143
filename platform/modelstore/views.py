"""The final model's download: only for those the registry lets use it (its mirror, written by
the settlement worker once each grant is mined), and a 404 for everyone else, so a model's
existence is not revealed either."""

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404

from .models import FinalModel


@login_required
def download(request, pk):
    model = FinalModel.objects.select_related("job").filter(job_id=pk).first()
    if model is None or not model.may_download(request.user) or not model.file.is_file():
        raise Http404("no final model to download")
    return FileResponse(
        model.file.open("rb"),
        as_attachment=True,
        filename=f"job-{model.job_id}-{model.sha256[:12]}.safetensors",
        content_type="application/octet-stream",
    )
