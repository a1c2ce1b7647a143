"""A job's final model: uploaded by the job's validator node as opaque safetensors bytes, stored by
hash, registered in the on-chain ModelRegistry by the settlement worker (real anvil), and served
only to those the registry lets use it. The attack comes first: a stranger downloading it."""

import hashlib
import json
import secrets
import struct
from datetime import timedelta

import pytest
import torch
from django.test import Client
from django.utils import timezone
from web3 import Web3

from jobs import queue
from jobs.models import Job, PeerReport, Round
from ledger import registry, settlement
from ledger.chain import Chain
from ledger.models import Payout, TxStatus
from ledger.wallets import payout_address
from modelstore.models import FinalModel, ModelGrant
from peers.wire import tensorbytes
from tests.factories import make_node, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def store(chain_settings, settings, tmp_path):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the settlement worker's task, run in process
    settings.MODEL_STORE_DIR = tmp_path / "models"
    return settings.MODEL_STORE_DIR


def new_address() -> str:
    return Web3.to_checksum_address("0x" + secrets.token_hex(20))


def blob(seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return tensorbytes.dump(
        {"layer.weight": torch.randn(4, 3, generator=generator), "layer.bias": torch.zeros(4)}, {"round": "3"}
    )


def finished_job(status=Job.Status.FINISHED, access="creator", **fields):
    """A finished job whose creator owns a validator node: (job, validator node)."""
    owner = make_user(payout_address=new_address())
    validator = make_node(owner, "validator")
    job = Job.objects.create(
        owner=owner, name="digits", rounds=1, status=status, validator=validator, model_access=access, **fields
    )
    return job, validator


def put(job_id: int, token: str, data: bytes, sha: str | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    headers["HTTP_X_CONTENT_SHA256"] = hashlib.sha256(data).hexdigest() if sha is None else sha
    return Client().put(f"/api/v1/jobs/{job_id}/model", data=data, content_type="application/octet-stream", **headers)


def download(user, job_id: int):
    client = Client()
    client.force_login(user)
    return client.get(f"/jobs/{job_id}/model/")


def has_access(model: FinalModel, address: str) -> bool:
    model.refresh_from_db()
    contract = Chain.from_settings().registry()
    return contract.functions.hasAccess(model.registry_model_id, Web3.to_checksum_address(address)).call()


def body(response) -> bytes:
    return b"".join(response.streaming_content)


# -- the attack -------------------------------------------------------------------------------------
def test_a_stranger_cannot_download_the_final_model(store):
    job, validator = finished_job()
    data = blob()
    assert put(job.id, validator.token, data).status_code == 201
    stranger = make_user(payout_address=new_address())
    response = download(stranger, job.id)
    assert response.status_code == 404  # the same answer as for a job without a model
    assert download(stranger, job.id + 1000).status_code == 404
    assert Client().get(f"/jobs/{job.id}/model/").status_code == 302  # login first
    model = FinalModel.objects.get(job=job)
    assert not has_access(model, stranger.profile.payout_address)
    # A node of the stranger's cannot upload in the job's name either, nor read it over the API.
    intruder = make_node(stranger, "intruder")
    assert put(job.id, intruder.token, blob(1)).status_code == 403
    assert 'id="final-model-download"' not in _page(stranger, job)


def _page(user, job) -> str:
    job.is_public = True
    job.save(update_fields=["is_public"])
    client = Client()
    client.force_login(user)
    return client.get(f"/jobs/{job.id}/").content.decode()


# -- upload refusals --------------------------------------------------------------------------------
def test_only_the_jobs_validator_node_uploads(store):
    job, validator = finished_job()
    other_node_of_creator = make_node(job.owner, "laptop")
    stranger_node = make_node(make_user(), "elsewhere")
    assert put(job.id, stranger_node.token, blob()).status_code == 403
    assert put(job.id, other_node_of_creator.token, blob()).status_code == 403  # the job names its validator
    assert put(job.id, "not-a-token", blob()).status_code == 401
    assert put(job.id + 1000, validator.token, blob()).status_code == 404
    # Without a validator, any node of the creator's may.
    job.validator = None
    job.save(update_fields=["validator"])
    assert put(job.id, stranger_node.token, blob()).status_code == 403
    assert put(job.id, other_node_of_creator.token, blob()).status_code == 201
    assert FinalModel.objects.get().uploaded_by == other_node_of_creator


def test_the_beat_safety_net_queues_only_models_with_work_left(store, monkeypatch):
    from ledger.tasks import register_final_models

    job, validator = finished_job()
    assert put(job.id, validator.token, blob()).status_code == 201  # registered and granted at once
    assert register_final_models() == 0
    waiting, node = finished_job()
    queued = []
    monkeypatch.setattr(queue, "register_final_model", queued.append)
    assert put(waiting.id, node.token, blob(2)).status_code == 201
    assert register_final_models() == 1 and queued == [FinalModel.objects.get(job=waiting).id] * 2


def test_not_before_the_job_has_finished(store):
    job, validator = finished_job(status=Job.Status.RUNNING)
    response = put(job.id, validator.token, blob())
    assert response.status_code == 409 and "finished" in response.json()["error"]
    assert not FinalModel.objects.exists()


def test_oversize_bad_hash_and_non_safetensors_are_refused(store, settings):
    job, validator = finished_job()
    data = blob()
    settings.MAX_MODEL_BYTES = len(data) - 1
    assert put(job.id, validator.token, data).status_code == 413
    settings.MAX_MODEL_BYTES = 1024 * 1024
    response = put(job.id, validator.token, data, sha="00" * 32)
    assert response.status_code == 400 and "SHA-256" in response.json()["error"]
    assert put(job.id, validator.token, data, sha="not hex").status_code == 400
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}).encode()
    for bad in (
        b"PK\x03\x04 a zip, e.g. a torch pickle",  # the header length would be absurd
        b"\x80\x04\x95 pickle" + b"\x00" * 40,
        struct.pack("<Q", 5) + b"nope!",  # a header that is not JSON
        struct.pack("<Q", 2) + b"[]",  # not an object
        struct.pack("<Q", len(header)) + header + b"\x00" * 4,  # offsets past the data
        b"short",
    ):
        response = put(job.id, validator.token, bad)
        assert response.status_code == 400, bad
        assert "not safetensors" in response.json()["error"]
    assert not FinalModel.objects.exists()
    assert list(store.iterdir()) == []  # no temporary file left behind


def test_the_declared_length_alone_is_refused_before_reading(store, settings):
    job, validator = finished_job()
    settings.MAX_MODEL_BYTES = 100
    headers = {"HTTP_AUTHORIZATION": f"Bearer {validator.token}", "HTTP_X_CONTENT_SHA256": "00" * 32}
    response = Client().generic(
        "PUT", f"/api/v1/jobs/{job.id}/model", b"x" * 101, content_type="application/octet-stream", **headers
    )
    assert response.status_code == 413 and "at most 100" in response.json()["error"]


# -- upload, registration, download -----------------------------------------------------------------
def test_the_final_model_is_stored_by_hash_registered_and_served_to_its_creator(store):
    job, validator = finished_job()
    data = blob()
    sha = hashlib.sha256(data).hexdigest()
    response = put(job.id, validator.token, data)
    assert response.status_code == 201, response.content
    assert response.json()["sha256"] == sha
    model = FinalModel.objects.get(job=job)
    assert model.file == store / f"{sha}.safetensors" and model.file.read_bytes() == data
    assert model.size == len(data) and model.uploaded_by == validator
    # The eager task registered it on chain with that hash and granted the creator.
    assert model.status == FinalModel.Status.REGISTERED and model.registry_model_id
    on_chain = Chain.from_settings().registry().functions.models(model.registry_model_id).call()
    assert bytes(on_chain[2]).hex() == sha and on_chain[1] is False
    creator_address = payout_address(job.owner)
    assert has_access(model, creator_address)
    assert not has_access(model, new_address())
    grant = ModelGrant.objects.get(final_model=model)
    assert (grant.user, grant.address, grant.status) == (job.owner, creator_address, ModelGrant.Status.GRANTED)
    assert grant.tx_hash
    assert registry.audit(model) == []
    response = download(job.owner, job.id)
    assert response.status_code == 200 and body(response) == data
    assert "attachment" in response["Content-Disposition"]
    page = _page(job.owner, job)
    assert sha in page and f"registry id {model.registry_model_id}" in page and 'id="final-model-download"' in page

    # The same bytes again: nothing new, on disk or on chain.
    count = Chain.from_settings().registry().functions.modelCount().call()
    again = put(job.id, validator.token, data)
    assert again.status_code == 200 and again.json()["sha256"] == sha
    assert Chain.from_settings().registry().functions.modelCount().call() == count
    assert registry.register(model.id)["registry_model_id"] == model.registry_model_id  # a rerun: no-op
    assert Chain.from_settings().registry().functions.modelCount().call() == count
    assert ModelGrant.objects.filter(final_model=model).count() == 1
    # Different bytes: refused, the first model stays.
    other = put(job.id, validator.token, blob(1))
    assert other.status_code == 409
    assert [p.name for p in store.iterdir()] == [f"{sha}.safetensors"]


def test_a_grant_is_served_only_once_it_is_mined(store, monkeypatch):
    """The web serves by the mirror, which the settler writes after the receipt: a model not
    registered yet (its task still queued) serves nothing, but to staff."""
    job, validator = finished_job()
    queued = []
    monkeypatch.setattr(queue, "register_final_model", queued.append)  # the settler is "down"
    assert put(job.id, validator.token, blob()).status_code == 201
    assert queued == [FinalModel.objects.get(job=job).id]
    assert download(job.owner, job.id).status_code == 404  # not registered yet
    staff = make_user()
    staff.is_staff = True
    staff.save()
    assert download(staff, job.id).status_code == 200
    model = FinalModel.objects.get(job=job)
    registry.register(model.id)
    assert download(job.owner, job.id).status_code == 200
    ModelGrant.objects.filter(final_model=model).update(status=ModelGrant.Status.PENDING)
    assert download(job.owner, job.id).status_code == 404  # a grant not mined serves nothing


def test_a_registration_signed_but_never_sent_is_sent_once(store, monkeypatch):
    """A settler that crashed after storing its signed registerModel: the rerun broadcasts those
    same bytes and the chain holds one model, not two."""
    job, validator = finished_job()
    monkeypatch.setattr(queue, "register_final_model", lambda model_id: None)
    assert put(job.id, validator.token, blob()).status_code == 201
    model = FinalModel.objects.get(job=job)
    chain = Chain.from_settings()
    contract = chain.registry()
    tx_hash, raw = chain.sign_call(contract.functions.registerModel("job", bytes.fromhex(model.sha256), False))
    FinalModel.objects.filter(pk=model.pk).update(register_tx_hash=tx_hash, register_raw_tx=raw)
    count = contract.functions.modelCount().call()
    registry.register(model.id)
    registry.register(model.id)
    model.refresh_from_db()
    assert contract.functions.modelCount().call() == count + 1 == model.registry_model_id
    assert model.register_tx_hash == tx_hash and model.status == FinalModel.Status.REGISTERED


def test_public_models_need_no_grants(store):
    job, validator = finished_job(status=Job.Status.SETTLED, access="public")
    data = blob()
    assert put(job.id, validator.token, data).status_code == 201
    model = FinalModel.objects.get(job=job)
    assert model.status == FinalModel.Status.REGISTERED
    assert has_access(model, new_address())  # isPublic on chain
    assert not ModelGrant.objects.exists()
    assert body(download(make_user(), job.id)) == data
    assert registry.audit(model) == []


def test_contributors_access_grants_the_paid_nodes_owners(store):
    job, validator = finished_job(status=Job.Status.RUNNING, access="contributors", reward_per_round=10)
    settlement.fund_with_test_tokens(job)
    contributors = [make_user(payout_address=new_address()) for _ in range(2)]
    nodes = [make_node(user, f"peer-{i}") for i, user in enumerate(contributors)]
    rnd = Round.objects.create(
        job=job, number=1, deadline=timezone.now() + timedelta(minutes=1), status=Round.Status.CLOSED
    )
    for node in nodes:
        PeerReport.objects.create(
            round=rnd,
            node=node,
            train_loss=1.0,
            eval_loss=1.0,
            accuracy=0.5,
            samples=10,
            eval_samples=10,
            model_hash="ab" * 32,
        )
    job.status = Job.Status.FINISHED
    job.save(update_fields=["status"])
    outsider = make_user(payout_address=new_address())
    assert put(job.id, validator.token, blob()).status_code == 201
    model = FinalModel.objects.get(job=job)
    assert Payout.objects.filter(job=job, status=TxStatus.CONFIRMED).count() == 2  # paid first
    granted = {g.user for g in model.grants.filter(status=ModelGrant.Status.GRANTED)}
    assert granted == {job.owner, *contributors}
    for user in (job.owner, *contributors):
        assert has_access(model, user.profile.payout_address)
        assert download(user, job.id).status_code == 200
    assert not has_access(model, outsider.profile.payout_address)
    assert download(outsider, job.id).status_code == 404
    assert not registry.outstanding(model) and registry.audit(model) == []


def test_the_audit_sees_a_mirror_that_says_more_than_the_chain(store):
    job, validator = finished_job()
    assert put(job.id, validator.token, blob()).status_code == 201
    model = FinalModel.objects.get(job=job)
    stranger = make_user(payout_address=new_address())
    ModelGrant.objects.create(
        final_model=model, user=stranger, address=stranger.profile.payout_address, status=ModelGrant.Status.GRANTED
    )
    problems = registry.audit(model)
    assert len(problems) == 1 and "not on chain" in problems[0]
