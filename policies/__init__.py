"""Pure decision code: no Airflow, Ray, MLflow or Spark imports; time is passed in."""

from policies._contract import (
    CONTRACT_VERSION,
    FIELDS,
    FIELDS_BY_NAME,
    ContractError,
    FieldSpec,
    RunContract,
    contract_json_schema,
)
from policies._promotion import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    ChampionRecord,
    GateCheck,
    PromotionDecision,
    decide_promotion,
    required_accuracy,
)
from policies._training import (
    DEADLINE_ALPHA,
    EpochDecision,
    InfeasibleError,
    StopReason,
    WorkerPlan,
    next_epoch_decision,
    plan_workers,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CONTRACT_VERSION",
    "DEADLINE_ALPHA",
    "FIELDS",
    "FIELDS_BY_NAME",
    "PREVIOUS_CHAMPION",
    "ChampionRecord",
    "ContractError",
    "EpochDecision",
    "FieldSpec",
    "GateCheck",
    "InfeasibleError",
    "PromotionDecision",
    "RunContract",
    "StopReason",
    "WorkerPlan",
    "contract_json_schema",
    "decide_promotion",
    "next_epoch_decision",
    "plan_workers",
    "required_accuracy",
]
