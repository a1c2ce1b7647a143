"""/metrics, in Prometheus' text format: platform counters and per-node gauges, computed from the
database at each scrape (a custom collector), so every web process answers the same numbers
whichever of them served the reports, closed the rounds or received the heartbeats.

Only addresses in METRICS_ALLOWED_IPS (addresses or networks; default 127.0.0.1) and staff
sessions may read it: node names and hardware are the operators' business."""

import ipaddress
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PlatformCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        from jobs.models import Job, PeerReport, Round
        from ledger.models import Payout, TxStatus
        from nodes.models import Node

        yield CounterMetricFamily(
            "dfl_reports_accepted", "Peer reports the platform accepted", PeerReport.objects.count()
        )
        yield CounterMetricFamily(
            "dfl_rounds_closed", "Rounds closed", Round.objects.filter(status=Round.Status.CLOSED).count()
        )
        yield CounterMetricFamily(
            "dfl_payouts_confirmed",
            "Payouts confirmed on chain",
            Payout.objects.filter(status=TxStatus.CONFIRMED).count(),
        )
        jobs = GaugeMetricFamily("dfl_jobs", "Jobs by status", labels=["status"])
        counts = dict(Job.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        for status in Job.Status.values:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs

        now = timezone.now()
        labels = ["node", "name"]
        online = GaugeMetricFamily("dfl_node_online", "1 when the node was heard from recently", labels=labels)
        age = GaugeMetricFamily(
            "dfl_node_last_seen_age_seconds", "Seconds since the node's last heartbeat or API call", labels=labels
        )
        cores = GaugeMetricFamily("dfl_node_cores", "CPU cores the node reported at hello", labels=labels)
        ram = GaugeMetricFamily("dfl_node_ram_gb", "RAM the node reported at hello (GB)", labels=labels)
        vram = GaugeMetricFamily("dfl_node_vram_gb", "GPU memory the node reported at hello (GB)", labels=labels)
        total_online = 0
        for node in Node.objects.order_by("id").only("id", "name", "last_seen", "cores", "ram_gb", "vram_gb"):
            key = [str(node.id), node.name]
            is_online = node.is_online
            total_online += is_online
            online.add_metric(key, int(is_online))
            if node.last_seen is not None:
                age.add_metric(key, max(0.0, (now - node.last_seen).total_seconds()))
            cores.add_metric(key, node.cores)
            ram.add_metric(key, node.ram_gb)
            vram.add_metric(key, node.vram_gb)
        yield GaugeMetricFamily("dfl_nodes_online", "Nodes online", total_online)
        yield from (online, age, cores, ram, vram)


registry = CollectorRegistry(auto_describe=False)
registry.register(PlatformCollector())


def allowed(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for allowed_net in settings.METRICS_ALLOWED_IPS:
        try:
            if address in ipaddress.ip_network(allowed_net, strict=False):
                return True
        except ValueError:  # a typo in the setting allows nobody, and breaks nothing else
            continue
    return False


def metrics(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return JsonResponse({"error": "metrics are for METRICS_ALLOWED_IPS and staff only"}, status=403)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
