"""A job's final model, uploaded by its validator node (node token auth): `PUT
/api/v1/jobs/<id>/model` with the raw safetensors bytes and `X-Content-SHA256`. The body is
streamed to a temporary file (never past MAX_MODEL_BYTES), hashed on the way, checked for
safetensors framing only (8-byte little-endian header length, then a JSON header whose tensors'
offsets fit the data; no tensor is decoded, nothing is unpickled), and stored by its hash with
an atomic rename. The settlement worker then registers it on chain (jobs.queue)."""

import hashlib
import os
import re
import struct
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import JsonResponse

from jobs import queue
from jobs.models import Job
from nodes import safejson
from nodes.api import api_error, node_api

from .models import FinalModel

CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
HEX64 = re.compile(r"[0-9a-f]{64}")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_framing(path: Path, size: int) -> None:
    """Refuse a file that is not framed as safetensors; tensors are never read."""
    if size < 8:
        raise Refused(400, "not safetensors: shorter than its 8-byte header length")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len < 2 or header_len > min(MAX_HEADER_BYTES, size - 8):
            raise Refused(400, f"not safetensors: header length {header_len} does not fit a {size}-byte file")
        raw = f.read(header_len)
    try:
        header = safejson.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise Refused(400, f"not safetensors: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise Refused(400, "not safetensors: the header is not a JSON object")
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise Refused(400, "not safetensors: __metadata__ must map strings to strings")
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)
            or not isinstance(entry.get("shape"), list)
            or not all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise Refused(400, f"not safetensors: tensor {str(name)[:64]!r} has no valid dtype, shape and offsets")


def _receive(request, store: Path) -> tuple[Path, str, int]:
    """Stream the body into a temporary file in the store; (temp path, sha256 hex, size)."""
    limit = settings.MAX_MODEL_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        raise Refused(400, "bad Content-Length") from None
    if declared > limit:
        raise Refused(413, f"the model is {declared} bytes; at most {limit} are accepted")
    store.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store, prefix=".upload-", suffix=".part")
    temp, digest, size = Path(name), hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := request.read(min(CHUNK, limit + 1 - size)):
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"the model is larger than {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest.hexdigest(), size


@node_api("PUT")
def upload(request, node, body, job_id: int):
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return api_error(404, "no such job")
    allowed = node.owner_id == job.owner_id and (node.id == job.validator_id if job.validator_id else True)
    if not allowed:
        return api_error(403, "only the job's validator node (a node of its creator's) uploads its final model")
    if job.status not in (Job.Status.FINISHED, Job.Status.SETTLED):
        return api_error(409, f"the job is {job.status}: the final model is uploaded once it has finished")
    claimed = request.headers.get("X-Content-SHA256", "").strip().lower()
    if not HEX64.fullmatch(claimed):
        return api_error(400, "X-Content-SHA256 must be the body's SHA-256 as 64 hex characters")
    existing = FinalModel.objects.filter(job=job).first()
    if existing is not None and existing.sha256 != claimed:
        return api_error(409, "this job already has a different final model")
    store = Path(settings.MODEL_STORE_DIR)
    try:
        temp, sha, size = _receive(request, store)
    except Refused as exc:
        return api_error(exc.status, str(exc))
    try:
        if sha != claimed:
            return api_error(400, f"the body's SHA-256 is {sha}, not the X-Content-SHA256 sent")
        try:
            check_framing(temp, size)
        except Refused as exc:
            return api_error(exc.status, str(exc))
        name = f"{sha}.safetensors"
        os.replace(temp, store / name)  # atomic; the same bytes again replace identical bytes
        try:
            with transaction.atomic():
                model, created = FinalModel.objects.get_or_create(
                    job=job, defaults={"sha256": sha, "size": size, "path": name, "uploaded_by": node}
                )
        except IntegrityError:  # a concurrent upload created it first
            model, created = FinalModel.objects.get(job=job), False
    finally:
        temp.unlink(missing_ok=True)
    if model.sha256 != sha:  # lost a race to a different upload: drop what this one stored
        if not FinalModel.objects.filter(sha256=sha).exists():
            (store / name).unlink(missing_ok=True)
        return api_error(409, "this job already has a different final model")
    if created or model.status == FinalModel.Status.PENDING:
        queue.register_final_model(model.id)  # the row is committed (no request-wide transaction)
    return JsonResponse(
        {"job": job.id, "sha256": model.sha256, "size": model.size, "status": model.status},
        status=201 if created else 200,
    )
