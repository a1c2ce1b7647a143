"""A job's final model in the ModelRegistry, run by the settlement worker (the web never reaches
the chain): `registerModel(name, sha256, isPublic)` signed by the operator under `signer_lock`,
its id read from the ModelRegistered event, then `grantAccess` to the creator's payout address
and, for "contributors" models, to every owner of a node the job paid. Each grant row becomes
`granted` only once its transaction is mined (or the chain already says hasAccess): the web serves
the blob by those rows, and `audit` compares them with the chain.

Idempotent: the signed registerModel is stored before it is broadcast, so a rerun waits for that
same transaction (or signs anew only when its nonce went to another one) and never registers a
model twice; grants already on chain are recorded without a transaction.
"""

import logging

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from web3 import Web3
from web3.logs import DISCARD

from jobs.models import Job
from ledger import settlement, signing, wallets
from ledger.chain import Chain, TransactionFailed
from ledger.models import Payout, TxStatus
from modelstore.models import FinalModel, ModelGrant

log = logging.getLogger(__name__)


def register(final_model_id: int) -> dict:
    """Register the model and grant access as far as it goes now; safe to run again."""
    model = FinalModel.objects.select_related("job__owner").get(pk=final_model_id)
    job = model.job
    if model.status == FinalModel.Status.FAILED:
        return _summary(model)
    if job.model_access == "contributors" and job.status == Job.Status.FINISHED:
        settlement.settle(job.id)  # the contributors are the nodes the job paid: pay them first
    chain = Chain.from_settings()
    with signing.signer_lock():
        model.refresh_from_db()
        if model.registry_model_id is None:
            _register(chain, model)
        if model.registry_model_id is not None and not model.is_public:
            for user in grantees(job):
                _grant(chain, model, user)
    return _summary(model)


def grantees(job: Job) -> list:
    """Who gets access to a non-public model: its creator, and for "contributors" the owners of
    the nodes the job paid (confirmed payouts of more than nothing)."""
    users = [job.owner]
    if job.model_access == "contributors":
        owner_ids = (
            Payout.objects.filter(job=job, status=TxStatus.CONFIRMED)
            .exclude(amount_wei="0")
            .values_list("node__owner_id", flat=True)
        )
        users += list(get_user_model().objects.filter(pk__in=owner_ids).exclude(pk=job.owner_id).order_by("pk"))
    return users


def outstanding(model: FinalModel) -> bool:
    """Whether a run has something left to do for this model (beat queues those)."""
    if model.status == FinalModel.Status.FAILED:
        return False
    if model.registry_model_id is None:
        return True
    if model.is_public:
        return False
    granted = set(model.grants.filter(status=ModelGrant.Status.GRANTED).values_list("user_id", flat=True))
    failed = set(model.grants.filter(status=ModelGrant.Status.FAILED).values_list("user_id", flat=True))
    return any(u.pk not in granted | failed for u in grantees(model.job))


def _summary(model: FinalModel) -> dict:
    model.refresh_from_db()
    return {
        "final_model": model.id,
        "status": model.status,
        "registry_model_id": model.registry_model_id,
        "granted": model.grants.filter(status=ModelGrant.Status.GRANTED).count(),
        "error": model.error,
    }


def _set(model: FinalModel, **changes) -> None:
    FinalModel.objects.filter(pk=model.pk).update(**changes)
    model.refresh_from_db()


def _register(chain: Chain, model: FinalModel) -> None:
    registry = chain.registry()
    tx_hash = model.register_tx_hash
    if tx_hash and chain.receipt(tx_hash) is None:
        if chain.nonce_spent(model.register_raw_tx) and chain.receipt(tx_hash) is None:
            _set(model, register_tx_hash="", register_raw_tx="", error="registerModel replaced before it was mined")
        else:
            chain.broadcast(model.register_raw_tx)  # the same bytes: mined once at most
    if not model.register_tx_hash:
        call = registry.functions.registerModel(
            f"job {model.job_id} final model", bytes.fromhex(model.sha256), model.is_public
        )
        try:
            tx_hash, raw = chain.sign_call(call)
        except Exception as exc:  # nothing signed (chain unreachable): the next run tries again
            _set(model, error=f"not signed: {exc}"[:2000])
            return
        # Stored before it is broadcast: a crash after this leaves a transaction to wait for.
        _set(model, register_tx_hash=tx_hash, register_raw_tx=raw, error="")
        chain.broadcast(raw)
    try:
        receipt = chain.wait(model.register_tx_hash)
    except TransactionFailed as exc:
        _set(model, status=FinalModel.Status.FAILED, error=str(exc))
        return
    except Exception as exc:  # not mined yet, or the node is unreachable
        _set(model, error=f"not confirmed yet: {exc}"[:2000])
        return
    events = registry.events.ModelRegistered().process_receipt(receipt, errors=DISCARD)
    if not events:
        _set(model, status=FinalModel.Status.FAILED, error="registerModel mined without a ModelRegistered event")
        return
    _set(model, registry_model_id=events[0]["args"]["modelId"], status=FinalModel.Status.REGISTERED, error="")


def _grant(chain: Chain, model: FinalModel, user) -> None:
    grant, _ = ModelGrant.objects.get_or_create(
        final_model=model, user=user, defaults={"address": wallets.payout_address(user)}
    )
    if grant.status != ModelGrant.Status.PENDING:
        return
    registry = chain.registry()
    try:
        address = Web3.to_checksum_address(grant.address)
    except ValueError:
        ModelGrant.objects.filter(pk=grant.pk).update(status=ModelGrant.Status.FAILED, error="not an address")
        return
    if not registry.functions.hasAccess(model.registry_model_id, address).call():
        try:
            tx_hash, raw = chain.sign_call(registry.functions.grantAccess(model.registry_model_id, address))
            ModelGrant.objects.filter(pk=grant.pk).update(tx_hash=tx_hash)
            chain.broadcast(raw)
            chain.wait(tx_hash)
        except TransactionFailed as exc:
            ModelGrant.objects.filter(pk=grant.pk).update(status=ModelGrant.Status.FAILED, error=str(exc))
            return
        except Exception as exc:  # stays pending: grantAccess is idempotent on chain, the next run retries
            ModelGrant.objects.filter(pk=grant.pk).update(error=f"not granted yet: {exc}"[:2000])
            return
    # Mined (or already on chain): only now may the web serve the model to this user.
    ModelGrant.objects.filter(pk=grant.pk, status=ModelGrant.Status.PENDING).update(
        status=ModelGrant.Status.GRANTED, granted_at=timezone.now(), error=""
    )


def audit(model: FinalModel) -> list[str]:
    """Mismatches between the database mirror and the registry on chain (empty: they agree)."""
    if model.registry_model_id is None:
        return [] if model.status != FinalModel.Status.REGISTERED else ["registered without a registry id"]
    registry = Chain.from_settings().registry()
    _owner, is_public, content_hash, _name = registry.functions.models(model.registry_model_id).call()
    problems = []
    if bytes(content_hash).hex() != model.sha256:
        problems.append(f"content hash on chain {bytes(content_hash).hex()} != {model.sha256}")
    if is_public != model.is_public:
        problems.append(f"isPublic on chain {is_public} != {model.is_public}")
    for grant in model.grants.filter(Q(status=ModelGrant.Status.GRANTED)):
        if not registry.functions.hasAccess(model.registry_model_id, Web3.to_checksum_address(grant.address)).call():
            problems.append(f"{grant.user} ({grant.address}) is granted in the database but not on chain")
    return problems
