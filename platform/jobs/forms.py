import math

from django import forms

from nodes.models import Node
from peers import topology
from peers.protocol import MODEL_ZOO, SERVER_RULES

from .models import DATASET_CHOICES, DATASET_SCHEMAS, RULE_CHOICES, Job, image_shape


class JobForm(forms.ModelForm):
    class Meta:
        model = Job
        fields = [
            "name",
            "description",
            "is_public",
            "dataset",
            "model",
            "hidden",
            "topology",
            "degree",
            "redraw_every",
            "rule",
            "byzantine_f",
            "clip_norm",
            "prox_mu",
            "server_lr",
            "compression",
            "num_peers",
            "rounds",
            "local_steps",
            "lr",
            "lr_schedule",
            "batch_size",
            "round_timeout_s",
            "min_vram_gb",
            "require_cuda",
            "reward_per_round",
            "burn_unspent",
            "stake",
            "validator",
            "model_access",
            "dp_level",
            "dp_noise",
            "dp_clip",
            "dp_epsilon",
            "secure_aggregation",
            "secagg_tree_group",
            "secagg_dropout",
        ]
        labels = {
            "dp_level": "Differential privacy",
            "dp_noise": "DP noise multiplier",
            "dp_clip": "DP clipping bound",
            "dp_epsilon": "Privacy budget (epsilon)",
            "num_peers": "Number of peers",
            "local_steps": "Local steps per round (tau)",
            "lr": "Learning rate",
            "lr_schedule": "Learning-rate schedule",
            "round_timeout_s": "Round deadline (seconds)",
            "min_vram_gb": "Minimum GPU memory (GB)",
            "require_cuda": "Requires CUDA",
            "reward_per_round": "Reward pool per round (tokens)",
            "burn_unspent": "Burn the unspent budget",
            "stake": "Stake per node (tokens)",
            "hidden": "Hidden units (MLP)",
            "rule": "Aggregation rule",
            "byzantine_f": "Faulty neighbours tolerated (f)",
            "clip_norm": "Clipping norm",
            "prox_mu": "FedProx mu",
            "server_lr": "FedAdam server learning rate",
            "redraw_every": "Redraw every (rounds)",
            "secagg_tree_group": "Aggregation tree group size",
            "secagg_dropout": "Dropouts tolerated (share of senders)",
        }
        help_texts = {
            "reward_per_round": "One pool per round, not per peer: each completed round pays this many tokens "
            "in total, split by measured contribution. You deposit rounds x this from your wallet before the job "
            "starts; nothing is ever paid beyond it.",
        }
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    FIELDSETS = [
        ("Job", ["name", "description", "is_public"]),
        ("Data and model", ["dataset", "model", "hidden"]),
        ("Training", ["rounds", "local_steps", "lr", "lr_schedule", "batch_size", "round_timeout_s"]),
        ("Federation", ["num_peers", "topology", "degree", "redraw_every"]),
        ("Robustness and wire", ["rule", "byzantine_f", "clip_norm", "prox_mu", "server_lr", "compression"]),
        (
            "Privacy",
            [
                "dp_level",
                "dp_noise",
                "dp_clip",
                "dp_epsilon",
                "secure_aggregation",
                "secagg_tree_group",
                "secagg_dropout",
            ],
        ),
        (
            "Participants and rewards",
            ["min_vram_gb", "require_cuda", "reward_per_round", "burn_unspent", "stake", "validator", "model_access"],
        ),
    ]

    def fieldsets(self):
        return [(title, [self[name] for name in names]) for title, names in self.FIELDSETS]

    # Advanced options fall back to the model's defaults when a client leaves them out.
    OPTIONAL = (
        "burn_unspent",
        "stake",
        "validator",
        "model_access",
        "degree",
        "redraw_every",
        "rule",
        "byzantine_f",
        "clip_norm",
        "prox_mu",
        "server_lr",
        "compression",
        "lr_schedule",
        "dp_level",
        "dp_noise",
        "dp_clip",
        "dp_epsilon",
        "secure_aggregation",
        "secagg_tree_group",
        "secagg_dropout",
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The validator holds the creator's validation data: only one of the creator's own nodes.
        validator = self.fields["validator"]
        validator.queryset = Node.objects.filter(owner=user) if user is not None else Node.objects.none()
        validator.empty_label = "None: split each round evenly between the peers that reported"
        for name in self.OPTIONAL:
            self.fields[name].required = False
        self.fields["reward_per_round"].initial = 100
        model = self.fields["model"]
        assert isinstance(model, forms.ChoiceField)  # a CharField with choices
        model.choices = [(name, f"{info.label} — {info.description}") for name, info in MODEL_ZOO.items()]
        model.help_text = "Image models need an image dataset; logistic regression and the MLP take any data."

    def _post_clean_defaults(self, data) -> None:
        for name in self.OPTIONAL:
            if data.get(name) in (None, ""):
                data[name] = Job._meta.get_field(name).get_default()  # type: ignore[union-attr]  # a concrete field

    LIMITS = {
        "num_peers": (1, 256),
        "rounds": (1, 1000),
        "local_steps": (1, 10_000),
        "hidden": (1, 4096),
        "batch_size": (1, 4096),
        "round_timeout_s": (10, 86_400),
        "reward_per_round": (0, 10**9),
        "stake": (0, 10**9),
        "degree": (1, 64),
        "redraw_every": (1, 1000),
        "byzantine_f": (0, 64),
    }

    def clean(self):
        data = super().clean()
        self._post_clean_defaults(data)
        for name, (low, high) in self.LIMITS.items():
            value = data.get(name)
            if value is not None and not low <= value <= high:
                self.add_error(name, f"Must be between {low} and {high}.")
        lr = data.get("lr")
        if lr is not None and not 0 < lr <= 10:
            self.add_error("lr", "Must be greater than 0 and at most 10.")
        if (data.get("min_vram_gb") or 0) < 0:
            self.add_error("min_vram_gb", "Must not be negative.")
        if data.get("rule") == "norm_clip" and not (data.get("clip_norm") or 0) > 0:
            self.add_error("clip_norm", "Must be greater than 0.")
        self._check_privacy(data)
        self._check_model(data)
        if data.get("rule") in SERVER_RULES:
            self._check_centralized(data)
        if (data.get("stake") or 0) > 0 and not data.get("reward_per_round"):
            self.add_error("stake", "A stake needs rewards: the ledger holds stakes for jobs with a deposit.")
        if not self.errors:
            self._check_graph(data)
        if data.get("secagg_tree_group") and not self.errors:
            self._check_tree(data)
        return data

    def _check_privacy(self, data) -> None:
        """The numbers a peer would refuse (JobConfig's checks), as form errors."""
        for name, high in (("dp_noise", 100.0), ("dp_clip", 1e6), ("dp_epsilon", 1e6)):
            value = data.get(name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= high):
                self.add_error(name, f"Must be between 0 and {high:g}.")
        if (data.get("dp_noise") or 0) > 0 and not (data.get("dp_clip") or 0) > 0:
            self.add_error("dp_clip", "Must be greater than 0 when there is noise (the noise is calibrated to it).")

    def _check_model(self, data) -> None:
        """The model must take the task's data as its datasets declare it (jobs.models.DATASET_SCHEMAS):
        an image model needs images; DP-SGD cannot train a model with BatchNorm."""
        info, task = MODEL_ZOO.get(data.get("model") or ""), data.get("dataset")
        if info is None or task not in DATASET_SCHEMAS:
            return  # the field's own choices error
        if info.inputs == "image" and image_shape(task) is None:
            self.add_error(
                "model",
                f"{info.label} is an image model and {dict(DATASET_CHOICES)[task]} is tabular "
                "data (features, no channels × height × width): choose logistic regression or the MLP.",
            )
        if info.batch_norm and (data.get("dp_noise") or 0) > 0 and data.get("dp_level") == "sample":
            self.add_error(
                "model",
                f"{info.label} uses BatchNorm, which has no per-sample gradient: DP-SGD cannot train it "
                "(choose client-level privacy or another model).",
            )

    def _check_centralized(self, data) -> None:
        """The centralized baselines run on the star (its centre aggregates) and add no noise to
        the aggregator's own model (no differential privacy). Secure aggregation is checked with
        the graph (``_check_secure_star``)."""
        rule = dict(RULE_CHOICES)[data["rule"]].split(" (")[0]
        if data.get("topology") != "star":
            self.add_error(
                "topology", f"{rule} is a centralized baseline: choose the star topology (its centre aggregates)."
            )
        if (data.get("dp_noise") or 0) > 0:
            self.add_error(
                "dp_noise", f"{rule} runs without differential privacy: set the noise to 0 or use a gossip rule."
            )
        mu, server_lr = data.get("prox_mu"), data.get("server_lr")
        if data["rule"] == "fedprox" and mu is not None and not (math.isfinite(mu) and 0 <= mu <= 100):
            self.add_error("prox_mu", "Must be between 0 and 100.")
        if (
            data["rule"] == "fedadam"
            and server_lr is not None
            and not (math.isfinite(server_lr) and 0 < server_lr <= 10)
        ):
            self.add_error("server_lr", "Must be greater than 0 and at most 10.")

    def _check_graph(self, data) -> None:
        """The topology must exist for this many peers, and a robust rule needs enough inputs
        in every neighbourhood (a peer aggregates itself and its neighbours)."""
        n, f, rule = data["num_peers"], data["byzantine_f"], data["rule"]
        job = Job(topology=data["topology"], degree=data["degree"], redraw_every=data["redraw_every"], seed=0)
        try:
            graph = topology.graph(job.topology, n, **job.topology_params(1, {i: i for i in range(n)}))
        except ValueError as exc:
            self.add_error("topology", f"Not possible with {n} peers: {exc}")
            return
        if data.get("secure_aggregation") and rule in SERVER_RULES:
            self._check_secure_star(data, n)
        elif data.get("secure_aggregation"):
            self._check_secure_aggregation(data, n)
        smallest = min(len(nbrs) for nbrs in graph) + 1
        needs = {"krum": 2 * f + 3, "multi_krum": 2 * f + 3, "bulyan": 4 * f + 3}.get(rule, 1)
        if smallest < needs:
            self.add_error(
                "rule",
                f"{dict(RULE_CHOICES)[rule]} with f={f} needs {needs} inputs per "
                f"neighbourhood; this topology gives some peers only {smallest}.",
            )

    SECAGG_MIN_NEIGHBOURS = 3  # one may drop out and the sum still covers two

    def _check_secure_star(self, data, n: int) -> None:
        """Secure aggregation on the star (peers.star): the centre learns only the sum of the
        leaves' models, so at least 3 leaves (one may drop and the sum still covers two), no
        validator (it scores each model) and no compression (masked models are full vectors)."""
        rule = dict(RULE_CHOICES)[data["rule"]].split(" (")[0]
        leaves = n - 1
        if leaves < self.SECAGG_MIN_NEIGHBOURS:
            self.add_error(
                "secure_aggregation",
                f"Secure aggregation with {rule} needs at least {self.SECAGG_MIN_NEIGHBOURS} leaves around the "
                f"star's centre ({self.SECAGG_MIN_NEIGHBOURS + 1} peers): one may drop and the sum still hides "
                f"each model; this star has {leaves}.",
            )
        if data["compression"] != "none":
            self.add_error("secure_aggregation", "Secure aggregation sends uncompressed masked models.")
        if data.get("validator") is not None:
            self.add_error(
                "secure_aggregation",
                "Secure aggregation hides the individual models the validator scores: choose one or the other.",
            )

    TREE_MIN_GROUP = 3  # a group of 2 hands its other member's model to the aggregator
    TREE_MIN_GROUPS = 3  # the root and two aggregators, so that it learns no group's sum alone

    def _check_tree(self, data) -> None:
        """The aggregation tree (peers.star_tree) is a layout of the star with secure aggregation:
        groups of at least 3 (``topology.tree_layout`` over the job's peers), at least 3 of them."""
        g, n = data["secagg_tree_group"], data["num_peers"]
        if data.get("rule") not in SERVER_RULES or not data.get("secure_aggregation"):
            self.add_error(
                "secagg_tree_group",
                "An aggregation tree is a layout of secure aggregation on the star: choose FedAvg, FedProx or "
                "FedAdam with secure aggregation, or set the group size to 0.",
            )
            return
        if g < self.TREE_MIN_GROUP:
            self.add_error(
                "secagg_tree_group",
                f"Groups need at least {self.TREE_MIN_GROUP} peers: in a group of 2 the aggregator would learn "
                "the other member's model. Set 0 for the plain star.",
            )
            return
        sizes = [len(group.members) for group in topology.tree_layout(range(n), g).groups]
        if min(sizes) < self.TREE_MIN_GROUP or len(sizes) < self.TREE_MIN_GROUPS:
            self.add_error(
                "secagg_tree_group",
                f"{n} peers in groups of {g} make groups of {', '.join(map(str, sizes))}: the tree needs at least "
                f"{self.TREE_MIN_GROUPS} groups (the centre and two aggregators, so that it learns no one group's "
                f"sum) of at least {self.TREE_MIN_GROUP} peers each. Change the group size or the number of peers.",
            )

    def _check_secure_aggregation(self, data, n: int) -> None:
        """Secure aggregation (peers.secagg.gossip) gives each peer only the sum of its
        neighbours' models: the rule must be the plain mean of equal weights over at least 3
        neighbours everywhere (checked on the job's first-round mixing rows), and nothing may
        need the individual models: no validator (it scores each one), no compression (it
        encodes one model against the last)."""
        if data["rule"] != "mean":
            self.add_error("secure_aggregation", "Secure aggregation works with the mean rule only.")
        if data["compression"] != "none":
            self.add_error("secure_aggregation", "Secure aggregation sends uncompressed masked models.")
        if data.get("validator") is not None:
            self.add_error(
                "secure_aggregation",
                "Secure aggregation hides the individual models the validator scores: choose one or the other.",
            )
        if data["topology"] == "dynamic":
            self.add_error("secure_aggregation", "Dynamic topologies cut links, leaving unequal mixing weights.")
            return
        job = Job(topology=data["topology"], degree=data["degree"], redraw_every=data["redraw_every"], seed=0)
        rows = topology.build(job.topology, n, **job.topology_params(1, {i: i for i in range(n)}))
        if min(len(row) - 1 for row in rows) < self.SECAGG_MIN_NEIGHBOURS:
            self.add_error(
                "secure_aggregation",
                f"Secure aggregation needs at least {self.SECAGG_MIN_NEIGHBOURS} neighbours per peer; "
                "this topology gives some peers fewer.",
            )
        elif any(max(row.values()) - min(row.values()) > 1e-9 for row in rows):
            self.add_error(
                "secure_aggregation", "Secure aggregation needs equal mixing weights; this topology's differ."
            )


class ConsentForm(forms.Form):
    node = forms.IntegerField()
    grant = forms.ChoiceField(choices=[("yes", "grant"), ("no", "revoke")])
    # Which of the node's declared datasets a grant covers, and when it lapses (both checked
    # against the job and the node by datasets.consent.grant_problem).
    dataset = forms.IntegerField(required=False)
    expires_at = forms.DateTimeField(required=False)
