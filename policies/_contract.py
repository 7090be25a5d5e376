"""The run contract: what one model run must achieve, as one typed, versioned object.

One table of :class:`FieldSpec` is the single source of truth: it validates a contract in
Python, generates the JSON schema, and (through ``operators.params``) the Airflow trigger form.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

CONTRACT_VERSION: Final = 1


class ContractError(ValueError):
    """A contract value is invalid. Names the field, the problem and the fix."""

    def __init__(self, field_name: str, problem: str, fix: str) -> None:
        self.field = field_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"contract field '{field_name}': {problem}. Fix: {fix}")


@dataclass(frozen=True)
class FieldSpec:
    """One contract field: its type, bounds, default and the words the trigger form shows."""

    name: str
    type: str  # JSON-schema type: number | integer | string | boolean | array
    default: Any
    title: str
    description: str
    section: str
    fix: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    items: Mapping[str, Any] | None = None
    min_items: int | None = None
    max_items: int | None = None

    @property
    def optional(self) -> bool:
        """A text field that may be left empty (its default is ""): null in the schema, so
        forms do not mark it as required."""
        return self.type == "string" and self.default == ""

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of this field (without default/title, which the caller adds)."""
        schema: dict[str, Any] = {"type": ["string", "null"] if self.optional else self.type}
        for key, value in (
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("exclusiveMinimum", self.exclusive_minimum),
            ("exclusiveMaximum", self.exclusive_maximum),
            ("pattern", self.pattern),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
        ):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.items is not None:
            schema["items"] = dict(self.items)
        if self.type == "string" and self.pattern is None:
            schema["minLength"] = 1
        return schema


_S_QUALITY = "Deadline and quality"
_S_BUDGET = "Budget"
_S_SERVING = "Serving"
_S_DATA = "Data"
_S_MODEL = "Model"
_S_FEDERATED = "Federated training"
_S_REVIEW = "Promotion review"

FIELDS: Final[tuple[FieldSpec, ...]] = (
    FieldSpec(
        "deadline_s",
        "number",
        600.0,
        "Training deadline (s)",
        "Wall-clock seconds training may take, counted from the start of the train task. "
        "Training stops in time to meet it and keeps the best model so far.",
        _S_QUALITY,
        "give the training budget in seconds, e.g. 600",
        exclusive_minimum=0,
        maximum=7 * 86400,
    ),
    FieldSpec(
        "target_accuracy",
        "number",
        0.9,
        "Target accuracy",
        "Test-set accuracy the model must reach to be promoted (0 < x < 1).",
        _S_QUALITY,
        "use a fraction below 1.0, e.g. 0.9 (no held-out metric is reliably 1.0)",
        exclusive_minimum=0,
        exclusive_maximum=1,
    ),
    FieldSpec(
        "min_gain_over_champion",
        "number",
        0.0,
        "Minimum gain over champion",
        "Accuracy the new model must add to the model now serving (champion) to replace it.",
        _S_QUALITY,
        "use a fraction between 0 and 0.5, e.g. 0.005",
        minimum=0,
        maximum=0.5,
    ),
    FieldSpec(
        "stop_margin",
        "number",
        0.03,
        "Validation margin",
        "Training stops early only once validation accuracy exceeds the accuracy the gate "
        "needs by this much: the gate reads the test set, a different sample, and a model "
        "stopped exactly at the threshold fails it about half the time (0.03 is about the "
        "95% CI half-width of a few hundred validation rows).",
        _S_QUALITY,
        "use a fraction from 0 to 0.2, e.g. 0.03",
        minimum=0,
        maximum=0.2,
    ),
    FieldSpec(
        "max_workers",
        "integer",
        2,
        "Max training workers",
        "Most Ray Train workers this run may use at once.",
        _S_BUDGET,
        "use a whole number from 1 to 64",
        minimum=1,
        maximum=64,
    ),
    FieldSpec(
        "cpus_per_worker",
        "number",
        1.0,
        "CPUs per worker",
        "Logical CPUs each training worker reserves on the Ray cluster.",
        _S_BUDGET,
        "use a number from 0.25 to 64",
        minimum=0.25,
        maximum=64,
    ),
    FieldSpec(
        "resize_policy",
        "string",
        "deadline",
        "Worker sizing",
        "deadline: the fewest workers that finish by the deadline, resized while training "
        "runs (checkpoint and restart); static: max_workers from start to end.",
        _S_BUDGET,
        "choose 'deadline' or 'static'",
        enum=("deadline", "static"),
    ),
    FieldSpec(
        "on_infeasible",
        "string",
        "fail",
        "If the contract is infeasible",
        "fail: stop before any training compute with the reason and what to relax; "
        "best_effort: train anyway and keep the best model the deadline allows.",
        _S_QUALITY,
        "choose 'fail' or 'best_effort'",
        enum=("fail", "best_effort"),
    ),
    FieldSpec(
        "on_target_unreachable",
        "string",
        "stop",
        "If the target becomes unreachable",
        "While training, the learning curve is extrapolated; when it cannot reach the target "
        "by the deadline, stop (keep the best model, save the compute) or continue to the "
        "deadline.",
        _S_QUALITY,
        "choose 'stop' or 'continue'",
        enum=("stop", "continue"),
    ),
    FieldSpec(
        "review_policy",
        "string",
        "never",
        "Human review of the gate",
        "never: the gate decides alone; borderline: a decision within the evaluation's noise "
        "(or a costlier model) waits for approval in Airflow (Required Actions); always: every "
        "candidate that meets the target waits for approval. Reject or no answer: not promoted.",
        _S_REVIEW,
        "choose 'never', 'borderline' or 'always'",
        enum=("never", "borderline", "always"),
    ),
    FieldSpec(
        "review_margin",
        "number",
        0.005,
        "Borderline margin",
        "A candidate whose accuracy is within max(this, the 95% CI half-width of its test "
        "accuracy) of the accuracy it needs, on either side, is borderline.",
        _S_REVIEW,
        "use a fraction from 0 to 0.2, e.g. 0.005",
        minimum=0,
        maximum=0.2,
    ),
    FieldSpec(
        "review_max_cost_ratio",
        "number",
        1.5,
        "Borderline serving cost ratio",
        "A candidate the gate would promote is borderline when it has more than this times "
        "the champion's parameters (its serving cost); 0 turns the cost rule off.",
        _S_REVIEW,
        "use a number from 0 to 100, e.g. 1.5 (0: off)",
        minimum=0,
        maximum=100,
    ),
    FieldSpec(
        "review_timeout_s",
        "integer",
        3600,
        "Review timeout (s)",
        "How long a review waits for an answer; no answer is recorded as 'not promoted'.",
        _S_REVIEW,
        "use a whole number of seconds from 10 to 604800 (a week)",
        minimum=10,
        maximum=7 * 86400,
    ),
    FieldSpec(
        "tuning_trials",
        "integer",
        0,
        "Tuning trials (Optuna)",
        "0: train the given hyperparameters. N > 0: an Optuna study of up to N trials "
        "(learning rate, hidden units, batch size) on Ray, pruned on validation accuracy and "
        "bounded by the deadline; the best trial's model goes on.",
        _S_MODEL,
        "use a whole number from 0 to 200",
        minimum=0,
        maximum=200,
    ),
    FieldSpec(
        "training_mode",
        "string",
        "centralized",
        "Training mode",
        "centralized: Ray Train data-parallel under the deadline controller; tuning: an Optuna "
        "study of tuning_trials trials; federated: FedAvg over Ray actor clients holding "
        "non-IID shards, local epochs per round chosen by fl_strategy; spark_mllib: MLlib's "
        "multinomial logistic regression on the Spark master (tabular data; max_epochs is its "
        "iteration limit, hidden_units is not used), under the Spark deadline controller.",
        _S_MODEL,
        "choose 'centralized', 'tuning', 'federated' or 'spark_mllib'",
        enum=("centralized", "tuning", "federated", "spark_mllib"),
    ),
    FieldSpec(
        "fl_clients",
        "integer",
        6,
        "Clients",
        "Federated clients (Ray actors), each holding a Dirichlet non-IID shard of the "
        "training data.",
        _S_FEDERATED,
        "use a whole number from 2 to 256",
        minimum=2,
        maximum=256,
    ),
    FieldSpec(
        "fl_clients_per_round",
        "integer",
        3,
        "Clients per round",
        "Clients sampled to train in each round (at most fl_clients).",
        _S_FEDERATED,
        "use a whole number from 1 to fl_clients",
        minimum=1,
        maximum=256,
    ),
    FieldSpec(
        "fl_rounds",
        "integer",
        20,
        "Round budget (R)",
        "Most FedAvg rounds; the target accuracy should be reached within them.",
        _S_FEDERATED,
        "use a whole number from 1 to 1000",
        minimum=1,
        maximum=1000,
    ),
    FieldSpec(
        "fl_network_budget",
        "integer",
        0,
        "Network budget (participations)",
        "Most client participations (one client in one round) in all; 0: rounds alone bound "
        "training.",
        _S_FEDERATED,
        "use 0 (no network budget) or a whole number of participations",
        minimum=0,
        maximum=1_000_000,
    ),
    FieldSpec(
        "fl_strategy",
        "string",
        "linear",
        "Local-epochs strategy",
        "How each round's local epochs are chosen (hyperFL): linear or quadratic control "
        "towards the target within the budget, or static (fl_local_epochs every round).",
        _S_FEDERATED,
        "choose 'linear', 'quadratic' or 'static'",
        enum=("linear", "quadratic", "static"),
    ),
    FieldSpec(
        "fl_local_epochs",
        "integer",
        1,
        "Local epochs (static / first round)",
        "Local epochs per round with the static strategy; the first round's with the others.",
        _S_FEDERATED,
        "use a whole number from 1 to fl_max_local_epochs",
        minimum=1,
        maximum=1024,
    ),
    FieldSpec(
        "fl_max_local_epochs",
        "integer",
        32,
        "Most local epochs per round",
        "Upper bound on the local epochs the controller may choose for a round.",
        _S_FEDERATED,
        "use a whole number from 1 to 1024",
        minimum=1,
        maximum=1024,
    ),
    FieldSpec(
        "fl_dirichlet_alpha",
        "number",
        0.5,
        "Non-IID skew (Dirichlet alpha)",
        "Label skew of the client shards: small (0.1) is very skewed, large (100) near IID.",
        _S_FEDERATED,
        "use a number above 0, e.g. 0.5",
        exclusive_minimum=0,
        maximum=1000,
    ),
    FieldSpec(
        "fl_round_timeout_s",
        "number",
        120.0,
        "Round timeout (s)",
        "Clients that have not answered by then are left out of the round (training goes on).",
        _S_FEDERATED,
        "give seconds above 0, e.g. 120",
        exclusive_minimum=0,
        maximum=86400,
    ),
    FieldSpec(
        "latency_slo_ms",
        "number",
        100.0,
        "Latency SLO (ms)",
        "Serving latency objective per request, at the percentile below.",
        _S_SERVING,
        "give milliseconds above 0, e.g. 100",
        exclusive_minimum=0,
        maximum=60_000,
    ),
    FieldSpec(
        "latency_percentile",
        "integer",
        99,
        "Latency percentile",
        "Percentile of request latency the SLO applies to.",
        _S_SERVING,
        "choose one of 50, 90, 95, 99",
        enum=(50, 90, 95, 99),
    ),
    FieldSpec(
        "serving_replicas",
        "integer",
        1,
        "Serving replicas",
        "Ray Serve replicas for the champion.",
        _S_SERVING,
        "use a whole number from 1 to 16",
        minimum=1,
        maximum=16,
    ),
    FieldSpec(
        "serving_node_resource",
        "string",
        "",
        "Serving node resource",
        "Custom Ray resource the Serve replicas must be placed on (e.g. 'large' or 'gpu_node'); "
        "empty: any node.",
        _S_SERVING,
        "name a custom resource some Ray node was started with, or leave it empty",
        pattern=r"^[A-Za-z0-9_.-]{0,64}$",
    ),
    FieldSpec(
        "serving_max_replicas",
        "integer",
        4,
        "Most serving replicas",
        "Upper bound the placement planner and the SLO autoscaler may use for the warm tier.",
        _S_SERVING,
        "use a whole number from 1 to 64, at least serving_replicas",
        minimum=1,
        maximum=64,
    ),
    FieldSpec(
        "expected_rps",
        "number",
        20.0,
        "Expected requests/s",
        "Mean request rate the endpoint should plan for (the planner sizes replicas from it).",
        _S_SERVING,
        "give requests per second, 0 or more, e.g. 20",
        minimum=0,
        maximum=1_000_000,
    ),
    FieldSpec(
        "peak_rps",
        "number",
        60.0,
        "Peak requests/s",
        "Request rate of bursts; the autoscaler's upper bound must hold it within the SLO.",
        _S_SERVING,
        "give requests per second, at least expected_rps, e.g. 60",
        minimum=0,
        maximum=1_000_000,
    ),
    FieldSpec(
        "serving_tiers",
        "string",
        "cpu_on_demand,scale_to_zero,gpu",
        "Allowed serving tiers",
        "Comma-separated tiers of the price table the planner may use: cpu_on_demand, "
        "cpu_spot, gpu, scale_to_zero (tiers the cluster lacks are left out).",
        _S_SERVING,
        "list tiers separated by commas, e.g. cpu_on_demand,scale_to_zero",
        pattern=r"^[a-z0-9_]+(,[a-z0-9_]+)*$",
    ),
    FieldSpec(
        "serving_accuracy_slack",
        "number",
        0.01,
        "Variant accuracy slack",
        "A cheaper model variant (int8) may serve if its measured accuracy is at most this "
        "far below the trained model's and still meets the target accuracy.",
        _S_SERVING,
        "use a fraction from 0 to 0.2 (0: only the full model)",
        minimum=0,
        maximum=0.2,
    ),
    FieldSpec(
        "serving_budget_per_hour",
        "number",
        0.0,
        "Serving budget per hour",
        "Most the planned placement may cost per hour in the price table's currency; 0: no limit.",
        _S_SERVING,
        "give an amount, 0 or more (0: no limit)",
        minimum=0,
        maximum=1_000_000,
    ),
    FieldSpec(
        "data_source",
        "string",
        "sklearn:digits",
        "Data source",
        "CSV or Parquet path/URI with one row per example, or 'sklearn:digits' for the "
        "bundled digits data set.",
        _S_DATA,
        "give a readable .csv or .parquet path, or sklearn:digits",
    ),
    FieldSpec(
        "label_column",
        "string",
        "label",
        "Label column",
        "Column holding the class label; every other column must be numeric.",
        _S_DATA,
        "name the column of the data that holds the class label",
    ),
    FieldSpec(
        "validation_fraction",
        "number",
        0.15,
        "Validation fraction",
        "Share of rows held out for per-epoch validation.",
        _S_DATA,
        "use a fraction from 0.05 to 0.4",
        minimum=0.05,
        maximum=0.4,
    ),
    FieldSpec(
        "test_fraction",
        "number",
        0.15,
        "Test fraction",
        "Share of rows held out for the final test metrics and the promotion gate.",
        _S_DATA,
        "use a fraction from 0.05 to 0.4",
        minimum=0.05,
        maximum=0.4,
    ),
    FieldSpec(
        "spark_master",
        "string",
        "",
        "Spark master",
        "Where the prepare stage runs: a standalone master URL (spark://host:7077) or "
        "local[N]; empty: the slaflow_spark connection or SLAFLOW_SPARK_MASTER (local[*]).",
        _S_DATA,
        "give spark://host:port, local[*] or local[N], or leave it empty",
        pattern=r"^$|^local(\[(\*|[0-9]{1,4})\])?$|^spark://[A-Za-z0-9_.-]+:[0-9]{1,5}"
        r"(,[A-Za-z0-9_.-]+:[0-9]{1,5})*$",
    ),
    FieldSpec(
        "prepare_deadline_s",
        "number",
        0.0,
        "Data preparation deadline (s)",
        "0: no deadline. Above 0: the Spark prepare job runs under the dynaSpark controller "
        "(cores per stage from a stored profile, resized while it runs on a standalone master); "
        "the first run of a data set profiles it.",
        _S_DATA,
        "give seconds, e.g. 60, or 0 for no deadline",
        minimum=0,
        maximum=7 * 86400,
    ),
    FieldSpec(
        "prepare_max_cores",
        "integer",
        2,
        "Most Spark cores",
        "Cores the Spark jobs (prepare, and spark_mllib training) may hold at once under "
        "their deadline.",
        _S_DATA,
        "use a whole number from 1 to 4096",
        minimum=1,
        maximum=4096,
    ),
    FieldSpec(
        "model_name",
        "string",
        "slaflow-digits",
        "Registered model name",
        "Name of the model in the MLflow registry; also the Serve application and route.",
        _S_MODEL,
        "use letters, digits, '-', '_' or '.', starting with a letter or digit",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
    ),
    FieldSpec(
        "hidden_units",
        "array",
        [64, 64],
        "Hidden layer sizes",
        "Units of each hidden Dense layer of the Keras MLP.",
        _S_MODEL,
        "give 1 to 8 whole numbers from 1 to 4096, e.g. [64, 64]",
        items={"type": "integer", "minimum": 1, "maximum": 4096},
        min_items=1,
        max_items=8,
    ),
    FieldSpec(
        "max_epochs",
        "integer",
        30,
        "Max epochs",
        "Upper bound on epochs; training stops earlier at the target or the deadline.",
        _S_MODEL,
        "use a whole number from 1 to 1000",
        minimum=1,
        maximum=1000,
    ),
    FieldSpec(
        "batch_size",
        "integer",
        64,
        "Batch size per worker",
        "Examples per worker per step.",
        _S_MODEL,
        "use a whole number from 1 to 65536",
        minimum=1,
        maximum=65536,
    ),
    FieldSpec(
        "learning_rate",
        "number",
        0.005,
        "Learning rate",
        "Adam learning rate.",
        _S_MODEL,
        "use a number above 0 and at most 1, e.g. 0.005",
        exclusive_minimum=0,
        maximum=1,
    ),
    FieldSpec(
        "seed",
        "integer",
        42,
        "Seed",
        "Seed for the data split and weight initialisation.",
        _S_MODEL,
        "use a whole number from 0 to 2147483647",
        minimum=0,
        maximum=2**31 - 1,
    ),
)

FIELDS_BY_NAME: Final[Mapping[str, FieldSpec]] = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class RunContract:
    """What one run must achieve. Build it with :meth:`from_dict`, which validates."""

    deadline_s: float
    target_accuracy: float
    min_gain_over_champion: float
    max_workers: int
    cpus_per_worker: float
    latency_slo_ms: float
    latency_percentile: int
    serving_replicas: int
    serving_node_resource: str
    data_source: str
    label_column: str
    validation_fraction: float
    test_fraction: float
    model_name: str
    hidden_units: tuple[int, ...]
    max_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    resize_policy: str = "deadline"
    on_infeasible: str = "fail"
    on_target_unreachable: str = "stop"
    tuning_trials: int = 0
    training_mode: str = "centralized"
    fl_clients: int = 6
    fl_clients_per_round: int = 3
    fl_rounds: int = 20
    fl_network_budget: int = 0
    fl_strategy: str = "linear"
    fl_local_epochs: int = 1
    fl_max_local_epochs: int = 32
    fl_dirichlet_alpha: float = 0.5
    fl_round_timeout_s: float = 120.0
    spark_master: str = ""
    prepare_deadline_s: float = 0.0
    prepare_max_cores: int = 2
    stop_margin: float = 0.03
    review_policy: str = "never"
    review_margin: float = 0.005
    review_max_cost_ratio: float = 1.5
    review_timeout_s: int = 3600
    serving_max_replicas: int = 4
    expected_rps: float = 20.0
    peak_rps: float = 60.0
    serving_tiers: str = "cpu_on_demand,scale_to_zero,gpu"
    serving_accuracy_slack: float = 0.01
    serving_budget_per_hour: float = 0.0
    contract_version: int = field(default=CONTRACT_VERSION)

    @classmethod
    def defaults(cls) -> RunContract:
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunContract:
        """Validate ``raw`` (missing fields take defaults) and build the contract.

        Raises :class:`ContractError` naming the first bad field and how to fix it.
        """
        if not isinstance(raw, Mapping):
            raise ContractError(
                "<contract>",
                f"must be a JSON object, got {type(raw).__name__}",
                "pass the contract as a mapping of field name to value",
            )
        known = set(FIELDS_BY_NAME) | {"contract_version"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ContractError(
                unknown[0],
                "is not a field of run contract v1",
                f"remove it or use one of: {', '.join(sorted(known))}",
            )
        version = raw.get("contract_version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ContractError(
                "contract_version",
                f"version {version!r} is not supported",
                f"use contract_version {CONTRACT_VERSION}",
            )
        values = {
            spec.name: _validate(spec, _or_default(spec, raw.get(spec.name, spec.default)))
            for spec in FIELDS
        }
        if values["validation_fraction"] + values["test_fraction"] > 0.6:
            raise ContractError(
                "test_fraction",
                "validation_fraction + test_fraction leave less than 40% of rows for training",
                "lower one of them so that they add up to at most 0.6",
            )
        _check_training_mode(values)
        _check_serving(values)
        values["hidden_units"] = tuple(values["hidden_units"])
        return cls(**values)

    @classmethod
    def from_validated(cls, raw: Mapping[str, Any]) -> RunContract:
        """Rebuild a contract that :meth:`from_dict` already validated (``to_dict`` output
        carried between tasks): no checks run again. Use :meth:`from_dict` for anything a
        person or another system wrote."""
        values = {spec.name: raw.get(spec.name, spec.default) for spec in FIELDS}
        values["hidden_units"] = tuple(values["hidden_units"])
        return cls(**values, contract_version=int(raw.get("contract_version", CONTRACT_VERSION)))

    @property
    def tuning(self) -> bool:
        """Whether training is an Optuna study (mode tuning, or trials given in centralized)."""
        return self.training_mode == "tuning" or (
            self.training_mode == "centralized" and self.tuning_trials > 0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; round-trips through :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        out["hidden_units"] = list(self.hidden_units)
        return out


SERVING_TIERS: Final[tuple[str, ...]] = ("cpu_on_demand", "cpu_spot", "gpu", "scale_to_zero")


def _check_serving(values: Mapping[str, Any]) -> None:
    """Cross-field rules of the serving section."""
    if values["peak_rps"] < values["expected_rps"]:
        raise ContractError(
            "peak_rps",
            f"{values['peak_rps']:g} is below expected_rps {values['expected_rps']:g}",
            "give a peak at least the expected rate",
        )
    if values["serving_max_replicas"] < values["serving_replicas"]:
        raise ContractError(
            "serving_max_replicas",
            f"{values['serving_max_replicas']} is below serving_replicas "
            f"{values['serving_replicas']}",
            "raise it to at least serving_replicas",
        )
    unknown = [t for t in values["serving_tiers"].split(",") if t not in SERVING_TIERS]
    if unknown:
        raise ContractError(
            "serving_tiers",
            f"names unknown tier(s) {unknown}",
            f"use some of {', '.join(SERVING_TIERS)}",
        )


def _check_training_mode(values: Mapping[str, Any]) -> None:
    """Cross-field rules of the training mode."""
    mode = values["training_mode"]
    if mode == "tuning" and values["tuning_trials"] < 1:
        raise ContractError(
            "tuning_trials",
            "must be at least 1 when training_mode is 'tuning'",
            "give the number of Optuna trials, e.g. 8",
        )
    if mode == "spark_mllib" and values["tuning_trials"] > 0:
        raise ContractError(
            "tuning_trials",
            "tuning is not available with training_mode 'spark_mllib'",
            "set tuning_trials to 0",
        )
    if mode == "federated":
        if values["tuning_trials"] > 0:
            raise ContractError(
                "tuning_trials",
                "tuning is not available with training_mode 'federated'",
                "set tuning_trials to 0",
            )
        if values["fl_clients_per_round"] > values["fl_clients"]:
            raise ContractError(
                "fl_clients_per_round",
                f"{values['fl_clients_per_round']} clients per round but only "
                f"{values['fl_clients']} clients",
                "lower it to at most fl_clients",
            )
        if values["fl_local_epochs"] > values["fl_max_local_epochs"]:
            raise ContractError(
                "fl_local_epochs",
                "is above fl_max_local_epochs",
                "lower it or raise fl_max_local_epochs",
            )
        budget = values["fl_network_budget"]
        if 0 < budget < values["fl_clients_per_round"]:
            raise ContractError(
                "fl_network_budget",
                f"{budget} participations do not pay for one round of "
                f"{values['fl_clients_per_round']} clients",
                "use 0 (no network budget) or at least fl_clients_per_round",
            )


def _or_default(spec: FieldSpec, value: Any) -> Any:
    """An optional text field (default "") left empty in a form arrives as None: same thing."""
    return spec.default if value is None and spec.optional else value


def _validate(spec: FieldSpec, value: Any) -> Any:
    name = spec.name
    if spec.type in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError(name, f"must be a {spec.type}, got {value!r}", spec.fix)
        if spec.type == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise ContractError(name, f"must be a whole number, got {value!r}", spec.fix)
            value = int(value)
        else:
            if not math.isfinite(value):
                raise ContractError(name, f"must be finite, got {value!r}", spec.fix)
            value = float(value)
        _check_bounds(spec, value)
    elif spec.type == "string":
        if not isinstance(value, str) or (spec.pattern is None and not value.strip()):
            raise ContractError(name, f"must be a non-empty string, got {value!r}", spec.fix)
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise ContractError(name, f"{value!r} does not match {spec.pattern}", spec.fix)
    elif spec.type == "array":
        value = _validate_int_list(spec, value)
    if spec.enum is not None and value not in spec.enum:
        raise ContractError(name, f"{value!r} is not one of {list(spec.enum)}", spec.fix)
    return value


def _check_bounds(spec: FieldSpec, value: float) -> None:
    checks: tuple[tuple[float | None, Callable[[float, float], bool], str], ...] = (
        (spec.minimum, operator.ge, ">="),
        (spec.maximum, operator.le, "<="),
        (spec.exclusive_minimum, operator.gt, ">"),
        (spec.exclusive_maximum, operator.lt, "<"),
    )
    for bound, ok, op in checks:
        if bound is not None and not ok(value, bound):
            raise ContractError(spec.name, f"must be {op} {bound:g}, got {value!r}", spec.fix)


def _validate_int_list(spec: FieldSpec, value: Any) -> list[int]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ContractError(spec.name, f"must be a list of whole numbers, got {value!r}", spec.fix)
    items = list(value)
    lo, hi = spec.min_items or 0, spec.max_items or len(items)
    if not lo <= len(items) <= hi:
        raise ContractError(spec.name, f"needs {lo} to {hi} entries, got {len(items)}", spec.fix)
    item_schema = spec.items or {}
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ContractError(spec.name, f"entry {item!r} is not a whole number", spec.fix)
        if not item_schema.get("minimum", item) <= item <= item_schema.get("maximum", item):
            raise ContractError(spec.name, f"entry {item} is out of range", spec.fix)
        out.append(item)
    return out


def contract_json_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of run contract v1, with titles, sections and defaults."""
    properties: dict[str, Any] = {}
    for spec in FIELDS:
        prop = spec.json_schema()
        prop.update(
            title=spec.title,
            description=spec.description,
            default=spec.default,
            section=spec.section,
        )
        properties[spec.name] = prop
    properties["contract_version"] = {
        "type": "integer",
        "const": CONTRACT_VERSION,
        "default": CONTRACT_VERSION,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"slaflow run contract v{CONTRACT_VERSION}",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
