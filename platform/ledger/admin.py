"""What went on chain, in the Django admin: read-only (hub.readonly_admin), searchable and
filtered. Wallet keys are never shown."""

from django.contrib import admin

from hub.readonly_admin import ReadOnlyAdmin

from .models import ContractDeployment, ContributionScore, Escrow, Payout, PayoutBatch, RoundSettlement, Wallet


@admin.register(Escrow)
class EscrowAdmin(ReadOnlyAdmin):
    list_display = ["job", "status", "budget_text", "funder", "funded_at", "closed_at"]
    list_filter = ["status", "burn_remainder"]
    search_fields = ["=job__id", "job__name", "funder", "fund_tx_hash", "close_tx_hash"]
    list_select_related = ["job"]
    date_hierarchy = "funded_at"


@admin.register(RoundSettlement)
class RoundSettlementAdmin(ReadOnlyAdmin):
    list_display = ["job", "number", "status", "scoring", "total_wei", "tx_hash", "block_number", "confirmed_at"]
    list_filter = ["status", "scoring"]
    search_fields = ["=job__id", "job__name", "tx_hash", "model_hash", "contribution_root", "reward_root"]
    list_select_related = ["job"]
    date_hierarchy = "created_at"


@admin.register(PayoutBatch)
class PayoutBatchAdmin(ReadOnlyAdmin):
    list_display = ["settlement", "chunk", "status", "tx_hash", "block_number", "confirmed_at"]
    list_filter = ["status"]
    search_fields = ["=settlement__job__id", "settlement__job__name", "tx_hash"]
    list_select_related = ["settlement"]
    date_hierarchy = "created_at"


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ["job", "round", "node", "address", "amount_text", "score_percent", "status", "tx_hash"]
    list_filter = ["status"]
    search_fields = ["=job__id", "job__name", "node__name", "address", "tx_hash"]
    list_select_related = ["job", "round", "round__job", "node"]
    date_hierarchy = "created_at"


@admin.register(ContributionScore)
class ContributionScoreAdmin(ReadOnlyAdmin):
    list_display = ["round", "node", "score_ppm", "source", "created_at"]
    list_filter = ["source"]
    search_fields = ["=round__job__id", "round__job__name", "node__name"]
    list_select_related = ["round", "round__job", "node"]
    date_hierarchy = "created_at"


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    exclude = ["key_ciphertext"]  # the encrypted key never leaves the settler
    list_display = ["user", "address", "tokens_text", "gas_text", "balances_at", "faucet_at"]
    list_filter = ["balances_at", "faucet_at"]
    search_fields = ["user__username", "user__email", "address"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"


@admin.register(ContractDeployment)
class ContractDeploymentAdmin(ReadOnlyAdmin):
    list_display = ["name", "chain_id", "address", "tx_hash", "block_number", "deployed_at"]
    list_filter = ["name", "chain_id"]
    search_fields = ["name", "address", "tx_hash"]
