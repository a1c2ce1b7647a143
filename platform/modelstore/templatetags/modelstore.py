"""`{% final_model_line job %}`: the job page's "Final model" line, with a download link for
viewers the registry (its database mirror) lets use the model."""

from django import template

from modelstore.models import FinalModel

register = template.Library()


@register.inclusion_tag("modelstore/final_model_line.html", takes_context=True)
def final_model_line(context, job):
    model = FinalModel.objects.filter(job=job).first()
    request = context.get("request")
    user = getattr(request, "user", None)
    return {"job": job, "model": model, "may_download": bool(model and user and model.may_download(user))}
