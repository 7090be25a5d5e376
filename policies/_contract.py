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

from policies._metrics import METRICS, TASKS, metric

CONTRACT_VERSION: Final = 2


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
    def schema_pattern(self) -> str | None:
        """The pattern as both checks run it: searched (JSON Schema's rule, which the form and
        ``jsonschema`` apply), with every ``$`` anchor meaning the end of the text (Python's
        ``$`` also matches before a final newline, so ``"mlp\\n"`` would pass). A free-text
        field must hold a non-space character."""
        if self.pattern is None:
            return r"\S" if self.type == "string" else None
        return re.sub(r"(?<!\\)\$", r"(?!\\n)$", self.pattern)

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
            ("pattern", self.schema_pattern),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
        ):
            if value is not None:
                schema[key] = value
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.items is not None:
            schema["items"] = dict(self.items)
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
        "task",
        "string",
        "auto",
        "Task",
        "classification or regression; auto: inferred from the label where that is "
        "unambiguous (text labels are classes, fractional numbers a quantity), otherwise the "
        "prepare task asks for it.",
        _S_QUALITY,
        "choose 'auto', 'classification' or 'regression'",
        enum=("auto", *TASKS),
    ),
    FieldSpec(
        "target_metric",
        "string",
        "accuracy",
        "Target metric",
        "The test-set metric the model is judged by: accuracy, f1_macro, roc_auc (binary "
        "labels) for classification; rmse, mae (lower is better), r2 for regression. The "
        "gate, early stop, review and canary all use it.",
        _S_QUALITY,
        f"choose one of {', '.join(METRICS)}",
        enum=tuple(METRICS),
    ),
    FieldSpec(
        "target_value",
        "number",
        0.9,
        "Target value",
        "The value of target_metric the model must reach to be promoted: at least this for "
        "accuracy, f1_macro, roc_auc, r2; at most this for rmse, mae (in the label's units).",
        _S_QUALITY,
        "give the metric's target, e.g. 0.9 for accuracy or 55 for an RMSE",
        minimum=-1e12,
        maximum=1e12,
    ),
    FieldSpec(
        "min_gain_over_champion",
        "number",
        0.0,
        "Minimum gain over champion",
        "How much better than the model now serving (champion), in target_metric's units, "
        "the new model must be to replace it (for rmse/mae: how much lower).",
        _S_QUALITY,
        "use a number from 0 up, in the metric's units, e.g. 0.005 for accuracy",
        minimum=0,
        maximum=1e12,
    ),
    FieldSpec(
        "stop_margin",
        "number",
        0.03,
        "Validation margin",
        "Training stops early only once the validation metric beats what the gate "
        "needs by this much (target_metric's units): the gate reads the test set, a "
        "different sample, and a model stopped exactly at the threshold fails it about half "
        "the time (0.03 is about the 95% CI half-width of a few hundred validation rows).",
        _S_QUALITY,
        "use a number from 0 up in the metric's units, e.g. 0.03 for accuracy",
        minimum=0,
        maximum=1e12,
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
        "A candidate whose test metric is within max(this, the 95% CI half-width of its test "
        "metric) of what it needs, on either side, is borderline (target_metric's units).",
        _S_REVIEW,
        "use a number from 0 up in the metric's units, e.g. 0.005 for accuracy",
        minimum=0,
        maximum=1e12,
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
        "0: train the given hyperparameters. N > 0: an Optuna study of up to N trials on Ray "
        "(search_space, or by default learning rate, batch size and, for the mlp, hidden "
        "units), pruned on the target metric's validation score and bounded by the deadline; "
        "the best trial's model goes on. Keras models (the mlp or your builder) only.",
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
        "A cheaper model variant (int8) may serve if its measured test metric is at most this "
        "far worse than the trained model's and still meets target_value.",
        _S_SERVING,
        "use a number from 0 up in the metric's units (0: only the full model)",
        minimum=0,
        maximum=1e12,
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
        "CSV or Parquet path/URI with one row per example, under one of the data roots the "
        "platform allows (SLAFLOW_DATA_ROOTS), or a bundled set: sklearn:digits, "
        "sklearn:diabetes, sklearn:breast_cancer, slaflow:tickets (text columns).",
        _S_DATA,
        "give a readable .csv or .parquet path, or a bundled set such as sklearn:digits",
    ),
    FieldSpec(
        "label_column",
        "string",
        "label",
        "Label column",
        "Column holding what the model predicts: class names or numbers (classification), "
        "or a quantity (regression).",
        _S_DATA,
        "name the column of the data that holds the label",
    ),
    FieldSpec(
        "feature_columns",
        "array",
        [],
        "Feature columns",
        "Columns the model reads; empty: every column but the label and drop_columns. "
        "Numeric columns are standardised, text columns become categories (a vocabulary "
        "computed by the prepare task, unseen values in an out-of-vocabulary bucket).",
        _S_DATA,
        'list column names, e.g. ["age", "city"], or leave it empty',
        items={"type": "string", "minLength": 1, "maxLength": 256},
        max_items=10_000,
    ),
    FieldSpec(
        "drop_columns",
        "array",
        [],
        "Columns to leave out",
        "Columns that are not features (IDs, timestamps, free text to ignore).",
        _S_DATA,
        'list column names, e.g. ["id", "created_at"], or leave it empty',
        items={"type": "string", "minLength": 1, "maxLength": 256},
        max_items=10_000,
    ),
    FieldSpec(
        "split",
        "string",
        "auto",
        "Split",
        "How rows are split into train/validation/test: stratified (each class in every split "
        "in proportion), random, or time (ordered by time_column: the newest rows are the "
        "test set); auto: stratified for classification, random for regression.",
        _S_DATA,
        "choose 'auto', 'stratified', 'random' or 'time'",
        enum=("auto", "stratified", "random", "time"),
    ),
    FieldSpec(
        "time_column",
        "string",
        "",
        "Time column",
        "With split 'time': the column that orders rows (newest last). It is not a feature.",
        _S_DATA,
        "name a column of the data that orders rows in time, or leave it empty",
        pattern=r"^.{0,256}$",
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
        "model",
        "string",
        "mlp",
        "Model",
        "mlp: the built-in Keras MLP (hidden_units). xgboost: gradient-boosted trees through "
        "Ray Train's XGBoost trainer (max_epochs x model_params.rounds_per_epoch boosting "
        "rounds, default 10 per epoch; model_params may set max_depth, eta, subsample, ...). "
        "package.module:function: your Keras model builder, importable on every Ray node; it "
        "is called as function(input_spec, model_params) and returns an uncompiled tf-keras "
        "model whose input is the encoded feature vector (input_spec says its width, the "
        "feature names and the task). train_loop:package.module:function: your own Ray "
        "Train train_loop_per_worker, any framework; it reports the validation target_metric "
        "with ray.train.report once per epoch, resumes from ray.train.get_checkpoint(), and "
        "its module defines load_predictor(checkpoint_dir, input_spec) for serving (see "
        "examples/digits_sgd_loop.py).",
        _S_MODEL,
        "use 'mlp', 'xgboost', 'package.module:function' (a Keras builder, e.g. "
        "'examples.digits_cnn:build') or 'train_loop:package.module:function' (a Ray Train "
        "loop, e.g. 'train_loop:examples.digits_sgd_loop:train_loop_per_worker')",
        pattern=r"^(mlp|xgboost)$|^(train_loop:)?[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
    ),
    FieldSpec(
        "model_params",
        "object",
        {},
        "Model parameters",
        "A JSON object handed to your model builder as it is (to your train loop as the "
        "keys of its config), or XGBoost's parameters (the built-in mlp ignores it).",
        _S_MODEL,
        'give a JSON object, e.g. {"filters": 16}',
    ),
    FieldSpec(
        "search_space",
        "string",
        "",
        "Tuning search space",
        "Empty: the built-in space. package.module:function: your Optuna define-by-run "
        "function, importable on every Ray node, called as function(trial) for each trial; it "
        "returns a dict of trial.suggest_* values: learning_rate, batch_size and hidden_units "
        "set the contract's fields, every other key goes to model_params (over the contract's). "
        "Used only when tuning (tuning_trials > 0).",
        _S_MODEL,
        "use '' or 'package.module:function', e.g. 'examples.digits_cnn:search_space'",
        pattern=r"^$|^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
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
    target_value: float
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
    task: str = "auto"
    target_metric: str = "accuracy"
    feature_columns: tuple[str, ...] = ()
    drop_columns: tuple[str, ...] = ()
    split: str = "auto"
    time_column: str = ""
    model: str = "mlp"
    model_params: Mapping[str, Any] = field(default_factory=dict)
    search_space: str = ""
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
        raw, notes = migrate_contract(raw)
        try:
            return cls._build(raw)
        except ContractError as exc:
            if notes and exc.field == "target_value":  # name the field the person wrote
                raise ContractError("target_accuracy", exc.problem, exc.fix) from None
            raise

    @classmethod
    def _build(cls, raw: Mapping[str, Any]) -> RunContract:
        known = set(FIELDS_BY_NAME) | {"contract_version"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ContractError(
                unknown[0],
                f"is not a field of run contract v{CONTRACT_VERSION}",
                f"remove it or use one of: {', '.join(sorted(known))}",
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
        _check_quality(values)
        _check_data(values)
        return cls(**_frozen(values))

    @classmethod
    def from_validated(cls, raw: Mapping[str, Any]) -> RunContract:
        """Rebuild a contract that :meth:`from_dict` already validated (``to_dict`` output
        carried between tasks): no checks run again. Use :meth:`from_dict` for anything a
        person or another system wrote."""
        values = {spec.name: raw.get(spec.name, spec.default) for spec in FIELDS}
        return cls(
            **_frozen(values), contract_version=int(raw.get("contract_version", CONTRACT_VERSION))
        )

    @property
    def quality_metric(self) -> Any:
        """The :class:`policies.Metric` of ``target_metric``."""
        return metric(self.target_metric)

    @property
    def target_score(self) -> float:
        """``target_value`` as a score (higher is better, 1 perfect): what every quality
        decision compares."""
        return metric(self.target_metric).score(self.target_value)

    @property
    def tuning(self) -> bool:
        """Whether training is an Optuna study (mode tuning, or trials given in centralized)."""
        return self.training_mode == "tuning" or (
            self.training_mode == "centralized" and self.tuning_trials > 0
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; round-trips through :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        for name in ("hidden_units", "feature_columns", "drop_columns"):
            out[name] = list(out[name])
        out["model_params"] = dict(self.model_params)
        return out


def _frozen(values: dict[str, Any]) -> dict[str, Any]:
    """Lists as tuples, so the contract is hashable and immutable."""
    for name in ("hidden_units", "feature_columns", "drop_columns"):
        values[name] = tuple(values[name])
    values["model_params"] = dict(values["model_params"])
    return values


def migrate_contract(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A v1 contract as v2, with one line per change (the plan task logs them).

    v1 judged every model by accuracy (``target_accuracy``); v2 names the metric
    (``target_metric``, ``target_value``). A contract that names no version is v1 when it
    carries ``target_accuracy``, otherwise v2."""
    out = dict(raw)
    version = out.pop("contract_version", 1 if "target_accuracy" in out else CONTRACT_VERSION)
    if version not in (1, CONTRACT_VERSION):
        raise ContractError(
            "contract_version",
            f"version {version!r} is not supported",
            f"use contract_version {CONTRACT_VERSION} (or 1, which is migrated)",
        )
    notes: list[str] = []
    if version == 1 or "target_accuracy" in out:
        if "target_accuracy" in out:
            if out.get("target_metric", "accuracy") != "accuracy":
                raise ContractError(
                    "target_accuracy",
                    f"is a v1 field and the contract also sets target_metric "
                    f"{out['target_metric']!r}",
                    "remove target_accuracy and give target_value in target_metric's units",
                )
            out["target_metric"] = "accuracy"
            out["target_value"] = out.pop("target_accuracy")
            notes.append(
                f"contract v1 migrated to v{CONTRACT_VERSION}: target_accuracy "
                f"{out['target_value']!r} -> target_metric 'accuracy', target_value "
                f"{out['target_value']!r}"
            )
        else:
            notes.append(f"contract v1 migrated to v{CONTRACT_VERSION}: nothing to change")
    return out, notes


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


def _check_quality(values: Mapping[str, Any]) -> None:
    """The target must be a value the metric can take, and the metric must fit the task."""
    m = metric(values["target_metric"])
    task = values["task"]
    if task != "auto" and m.task != task:
        raise ContractError(
            "target_metric",
            f"{m.name!r} is a {m.task} metric and task is {task!r}",
            f"use one of {', '.join(n for n, x in METRICS.items() if x.task == task)}",
        )
    value = values["target_value"]
    if m.name in ("accuracy", "f1_macro", "roc_auc") and not 0 < value < 1:
        raise ContractError(
            "target_value",
            f"{m.name} {value!r} is not between 0 and 1 (exclusive)",
            "use a fraction below 1.0, e.g. 0.9 (no held-out metric is reliably 1.0)",
        )
    if m.name in ("rmse", "mae") and value <= 0:
        raise ContractError(
            "target_value",
            f"{m.name} {value!r} is not above 0 (an error of 0 is never measured)",
            f"give the largest {m.name} you accept, in the label's units, e.g. 55",
        )
    if m.name == "r2" and not value < 1:
        raise ContractError(
            "target_value", f"r2 {value!r} is not below 1", "use a value below 1.0, e.g. 0.4"
        )
    tuning = values["training_mode"] == "tuning" or values["tuning_trials"] > 0
    if values["training_mode"] in ("federated", "spark_mllib") and (
        m.task != "classification" or values["model"] != "mlp"
    ):
        raise ContractError(
            "training_mode",
            f"{values['training_mode']!r} trains the built-in classifier (model 'mlp', a "
            f"classification metric) only",
            "use training_mode 'centralized' (or 'tuning') for this model and metric",
        )
    model = str(values["model"])
    if tuning and (model == "xgboost" or model.startswith("train_loop:")):
        raise ContractError(
            "tuning_trials",
            f"tuning trains Keras models (the built-in mlp or your builder), not {model!r}",
            "use tuning_trials 0 and training_mode 'centralized' for this model",
        )
    if values["search_space"] and not tuning:
        raise ContractError(
            "search_space",
            "is set but no study runs (tuning_trials is 0)",
            "set tuning_trials to the number of trials, or leave search_space empty",
        )


def _check_data(values: Mapping[str, Any]) -> None:
    """Columns the model reads, leaves out and orders by must not contradict each other."""
    label = values["label_column"]
    for name in ("feature_columns", "drop_columns"):
        if label in values[name]:
            raise ContractError(
                name, f"names the label column {label!r}", f"remove {label!r} from {name}"
            )
        if len(set(values[name])) != len(values[name]):
            raise ContractError(name, "names a column twice", "list each column once")
    both = sorted(set(values["feature_columns"]) & set(values["drop_columns"]))
    if both:
        raise ContractError(
            "drop_columns",
            f"{both[0]!r} is also in feature_columns",
            "list it in one of the two",
        )
    if values["split"] == "time" and not values["time_column"]:
        raise ContractError(
            "time_column",
            "is empty and split is 'time'",
            "name the column that orders rows in time, or choose another split",
        )
    if values["time_column"] and values["time_column"] in values["feature_columns"]:
        raise ContractError(
            "time_column",
            f"{values['time_column']!r} is also in feature_columns",
            "a time column orders rows and is not a feature: remove it from feature_columns",
        )
    if values["split"] == "stratified" and values["task"] == "regression":
        raise ContractError(
            "split",
            "'stratified' needs classes and task is 'regression'",
            "use 'random' or 'time'",
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


def _show(value: Any) -> str:
    """A value as an error message shows it: short, and never an exception of its own (a
    5,000-digit integer has no ``repr`` in Python 3.11, a list nested 5,000 deep overflows
    the stack)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _validate(spec: FieldSpec, value: Any) -> Any:
    name = spec.name
    if spec.type in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError(name, f"must be a {spec.type}, got {_show(value)}", spec.fix)
        if isinstance(value, float) and not math.isfinite(value):
            raise ContractError(name, f"must be finite, got {_show(value)}", spec.fix)
        if spec.type == "integer" and isinstance(value, float) and not value.is_integer():
            raise ContractError(name, f"must be a whole number, got {_show(value)}", spec.fix)
        # Bounds on the value as given (exact, as JSON Schema compares), then its type:
        # 10**400 is refused by its bound, never turned into a float.
        _check_bounds(spec, value)
        try:
            value = int(value) if spec.type == "integer" else float(value)
        except OverflowError:
            raise ContractError(name, f"is out of range, got {_show(value)}", spec.fix) from None
    elif spec.type == "string":
        pattern = spec.schema_pattern or ""
        if not isinstance(value, str) or (spec.pattern is None and not re.search(pattern, value)):
            raise ContractError(name, f"must be a non-empty string, got {_show(value)}", spec.fix)
        if spec.pattern is not None and not re.search(pattern, value):
            raise ContractError(name, f"{_show(value)} does not match {spec.pattern}", spec.fix)
    elif spec.type == "array":
        if (spec.items or {}).get("type") == "string":
            value = _validate_str_list(spec, value)
        else:
            value = _validate_int_list(spec, value)
    elif spec.type == "object":
        value = _validate_object(spec, value)
    if spec.enum is not None and value not in spec.enum:
        raise ContractError(name, f"{_show(value)} is not one of {list(spec.enum)}", spec.fix)
    return value


def _check_bounds(spec: FieldSpec, value: float | int) -> None:
    checks: tuple[tuple[float | None, Callable[[float, float], bool], str], ...] = (
        (spec.minimum, operator.ge, ">="),
        (spec.maximum, operator.le, "<="),
        (spec.exclusive_minimum, operator.gt, ">"),
        (spec.exclusive_maximum, operator.lt, "<"),
    )
    for bound, ok, op in checks:
        if bound is not None and not ok(value, bound):
            raise ContractError(spec.name, f"must be {op} {bound:g}, got {_show(value)}", spec.fix)


def _validate_int_list(spec: FieldSpec, value: Any) -> list[int]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ContractError(
            spec.name, f"must be a list of whole numbers, got {_show(value)}", spec.fix
        )
    items = list(value)
    lo, hi = spec.min_items or 0, spec.max_items or len(items)
    if not lo <= len(items) <= hi:
        raise ContractError(spec.name, f"needs {lo} to {hi} entries, got {len(items)}", spec.fix)
    item_schema = spec.items or {}
    out: list[int] = []
    for item in items:
        whole = isinstance(item, int) or (
            isinstance(item, float) and math.isfinite(item) and item.is_integer()
        )
        if isinstance(item, bool) or not whole:
            raise ContractError(spec.name, f"entry {_show(item)} is not a whole number", spec.fix)
        if not item_schema.get("minimum", item) <= item <= item_schema.get("maximum", item):
            raise ContractError(spec.name, f"entry {_show(item)} is out of range", spec.fix)
        out.append(int(item))
    return out


def _validate_str_list(spec: FieldSpec, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ContractError(
            spec.name, f"must be a list of column names, got {_show(value)}", spec.fix
        )
    items = list(value)
    if spec.max_items is not None and len(items) > spec.max_items:
        raise ContractError(spec.name, f"has {len(items)} entries, over {spec.max_items}", spec.fix)
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= 256:
            raise ContractError(spec.name, f"entry {_show(item)} is not a column name", spec.fix)
    return items


def _validate_object(spec: FieldSpec, value: Any) -> dict[str, Any]:
    import json

    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ContractError(spec.name, f"must be a JSON object, got {_show(value)}", spec.fix)
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ContractError(spec.name, f"is not JSON ({_show(exc)})", spec.fix) from None
    if len(text) > 65_536:
        raise ContractError(spec.name, f"is {len(text)} characters of JSON, over 65536", spec.fix)
    return json.loads(text)  # type: ignore[no-any-return]


def contract_json_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of the run contract, with titles, sections and defaults."""
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
        "enum": [1, CONTRACT_VERSION],
        "default": CONTRACT_VERSION,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"slaflow run contract v{CONTRACT_VERSION}",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
