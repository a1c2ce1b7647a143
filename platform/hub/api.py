"""The versioned REST API at /api/v1/, described by OpenAPI (django-ninja): /api/v1/openapi.json,
docs at /api/v1/docs (ReDoc, served from our static files: no CDN).

Two kinds of callers:

- nodes, with their bearer token (``Authorization: Bearer dfln_<id>_<secret>``): hello,
  heartbeat, plans, reports. These operations hand the request to the node API's views
  (nodes.api, jobs.api) unchanged: they check the token, the rate limit and the JSON body
  themselves and answer 4xx JSON ``{"error": ...}`` on anything wrong.
- people, with their session (the site's login cookie): read-only views of the jobs they may
  see, a job's metrics history, their own datasets and a job's consent records. Anonymous callers
  get 401 JSON; a job they may not see is 404 JSON (its existence is not told).

Anything else under /api/ that goes wrong (unknown path, wrong method, a crash) is answered in
JSON by hub.middleware.api_errors_as_json, never with an HTML page.
"""

import math
from datetime import datetime
from typing import Any

from datasets.consent import history_for_job
from datasets.models import Dataset
from django.http import Http404, HttpRequest
from ninja import Field, NinjaAPI, Schema
from ninja.openapi.docs import Redoc
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.security import HttpBearer, django_auth

from jobs import api as job_api
from jobs.models import Job, PeerReport
from nodes import api as node_api


class NodeToken(HttpBearer):
    """A node's bearer token, as the OpenAPI document describes it. The views check it
    (nodes.api.node_api: 401 ``{"error": ...}``, rate limit per node), so this lets every request
    through to them rather than checking the token twice."""

    openapi_description = "A node's token, `dfln_<id>_<secret>`, shown once when the node is registered."

    def __call__(self, request: HttpRequest) -> Any:
        return True

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover - never called
        return True


api = NinjaAPI(
    title="DFL platform API",
    version="1",
    description=__doc__ or "",
    docs=Redoc(),
    urls_namespace="api-v1",
)

node_token = NodeToken()


class Error(Schema):
    error: str


class Detail(Schema):
    detail: Any


def _body(description: str, properties: dict, required: list[str] | None = None) -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


NODE_ERRORS: dict[int, Any] = {400: Error, 401: Error, 403: Error, 429: Error, 503: Error}
HARDWARE = {
    "type": "object",
    "description": "What `python -m peers hw` reports: cpu, cores, ram_gb, gpus, cuda, ...",
}


class NodeInfo(Schema):
    node_id: int
    name: str
    channel: str
    heartbeat_s: float
    platform_key: str


@api.get("/node", auth=node_token, response={200: NodeInfo, **NODE_ERRORS}, tags=["nodes"], summary="The node itself")
def node(request):
    return node_api.me(request)


@api.post(
    "/node/hello",
    auth=node_token,
    response={200: Any, **NODE_ERRORS},
    tags=["nodes"],
    summary="A peer announces itself: hardware and its Ed25519 key; answers its exchange credentials",
    openapi_extra=_body(
        "hello",
        {
            "public_key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "hardware": HARDWARE,
            "key_change_signature": {"type": "string", "description": "hex, by the current key"},
        },
        ["public_key"],
    ),
)
def node_hello(request):
    return node_api.hello(request)


@api.post(
    "/node/heartbeat",
    auth=node_token,
    response={200: Any, **NODE_ERRORS},
    tags=["nodes"],
    summary="The peer is alive",
    openapi_extra=_body("heartbeat", {}),
)
def node_heartbeat(request):
    return node_api.heartbeat(request)


@api.get("/node/plans", auth=node_token, response={200: Any, **NODE_ERRORS}, tags=["nodes"], summary="Current plans")
def node_plans(request):
    return node_api.plans(request)


class Accepted(Schema):
    ok: bool
    report: int


@api.post(
    "/reports",
    auth=node_token,
    response={201: Accepted, 404: Error, 409: Error, **NODE_ERRORS},
    tags=["nodes"],
    summary="A peer's round report (peer.report) or the validator's scores (validator.scores)",
    openapi_extra=_body(
        "report",
        {"type": {"type": "string", "enum": ["peer.report", "validator.scores"]}},
    ),
)
def reports(request):
    return job_api.report(request)


# People (session) ---------------------------------------------------------------------------


class JobOut(Schema):
    id: int
    name: str
    description: str
    owner: str
    status: str
    is_public: bool
    dataset: str
    model: str
    rounds: int
    current_round: int
    num_peers: int
    reward_per_round: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_owner(job) -> str:
        return job["owner"] if isinstance(job, dict) else job.owner.username


class ReportOut(Schema):
    node: int
    node_name: str
    received_at: datetime
    train_loss: float | None
    eval_loss: float | None
    accuracy: float | None
    samples: int
    eval_samples: int
    bytes_sent: int
    bytes_received: int
    duration_s: float | None
    diverged: bool
    epsilon: float | None
    budget_spent: bool


class RoundOut(Schema):
    number: int
    status: str
    opened_at: datetime
    deadline: datetime
    closed_at: datetime | None
    mean_loss: float | None
    mean_accuracy: float | None
    reporters: int
    reports: list[ReportOut]


class DatasetOut(Schema):
    id: int
    node: int
    node_name: str
    name: str
    task: str
    data_schema: dict[str, Any]
    samples: int
    description: str
    created_at: datetime


class ConsentOut(Schema):
    id: int
    node: int
    node_name: str
    granted: bool
    stands: bool
    by: str
    at: datetime
    scope: str
    dataset: int | None
    expires_at: datetime | None


SESSION_ERRORS: dict[int, Any] = {401: Detail, 404: Detail}


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity (a diverged peer's losses): null instead."""
    return value if value is not None and math.isfinite(value) else None


def job_out(job: Job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "description": job.description,
        "owner": job.owner.username,
        "status": job.status,
        "is_public": job.is_public,
        "dataset": job.dataset,
        "model": job.model,
        "rounds": job.rounds,
        "current_round": job.current_round,
        "num_peers": job.num_peers,
        "reward_per_round": job.reward_per_round,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


class Page(LimitOffsetPagination):
    """limit and offset bounded, so that no query string can push SQL's OFFSET past a bigint."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=1000)
        offset: int = Field(0, ge=0, le=2**31 - 1)


def visible_job(request, job_id: int) -> Job:
    job = Job.visible_to(request.user).select_related("owner").filter(pk=job_id).first()
    if job is None:
        raise Http404("No such job")
    return job


@api.get("/jobs", auth=django_auth, response={200: list[JobOut], 401: Detail}, tags=["jobs"])
@paginate(Page)
def jobs(request):
    """The jobs the user may see: public ones, their own, those their nodes consented to."""
    return Job.visible_to(request.user).select_related("owner").order_by("-created_at", "-id")  # paginated in SQL


@api.get("/jobs/{int:job_id}", auth=django_auth, response={200: JobOut, **SESSION_ERRORS}, tags=["jobs"])
def job(request, job_id: int):
    return job_out(visible_job(request, job_id))


@api.get("/jobs/{int:job_id}/rounds", auth=django_auth, response={200: list[RoundOut], **SESSION_ERRORS}, tags=["jobs"])
def job_rounds(request, job_id: int):
    """The job's metrics history: each round's means and every peer's report."""
    rounds = visible_job(request, job_id).round_set.order_by("number")
    reports: dict[int, list[PeerReport]] = {}
    for report in PeerReport.objects.filter(round__in=rounds).select_related("node"):
        reports.setdefault(report.round_id, []).append(report)
    return [
        {
            "number": r.number,
            "status": r.status,
            "opened_at": r.opened_at,
            "deadline": r.deadline,
            "closed_at": r.closed_at,
            "mean_loss": finite(r.mean_loss),
            "mean_accuracy": finite(r.mean_accuracy),
            "reporters": r.reporters,
            "reports": [
                {
                    "node": p.node_id,
                    "node_name": p.node.name,
                    "received_at": p.received_at,
                    "train_loss": finite(p.train_loss),
                    "eval_loss": finite(p.eval_loss),
                    "accuracy": finite(p.accuracy),
                    "samples": p.samples,
                    "eval_samples": p.eval_samples,
                    "bytes_sent": p.bytes_sent,
                    "bytes_received": p.bytes_received,
                    "duration_s": finite(p.duration_s),
                    "diverged": p.diverged,
                    "epsilon": finite(p.epsilon),
                    "budget_spent": p.budget_spent,
                }
                for p in reports.get(r.id, [])
            ],
        }
        for r in rounds
    ]


@api.get(
    "/jobs/{int:job_id}/consents",
    auth=django_auth,
    response={200: list[ConsentOut], **SESSION_ERRORS},
    tags=["consent"],
)
def job_consents(request, job_id: int):
    """The job's consent records (append-only, newest first): all of them for its creator, their
    own nodes' for a participant, 404 for anyone else (as the consent history page)."""
    job = Job.objects.filter(pk=job_id).first()
    rows = history_for_job(job, request.user) if job is not None else None
    if rows is None:
        raise Http404("No such job")
    return [
        {
            "id": c.id,
            "node": c.node_id,
            "node_name": c.node.name,
            "granted": c.granted,
            "stands": c.stands,
            "by": c.by.username,
            "at": c.at,
            "scope": c.scope,
            "dataset": c.dataset_id,
            "expires_at": c.expires_at,
        }
        for c in rows
    ]


@api.get("/datasets", auth=django_auth, response={200: list[DatasetOut], 401: Detail}, tags=["datasets"])
def datasets(request):
    """The datasets the user declared for their nodes (metadata only: the data never leaves a node)."""
    return [
        {
            "id": d.id,
            "node": d.node_id,
            "node_name": d.node.name,
            "name": d.name,
            "task": d.task,
            "data_schema": d.schema,
            "samples": d.samples,
            "description": d.description,
            "created_at": d.created_at,
        }
        for d in Dataset.objects.filter(owner=request.user).select_related("node")
    ]
