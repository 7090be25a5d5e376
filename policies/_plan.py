"""The run plan: the contract, validated once by the ``plan`` task, with what was decided
from it before any compute (the champion to beat, when training may stop early, how many
workers fit). Later stages read it as it is: no stage validates the contract again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies._contract import RunContract
from policies._promotion import ChampionRecord, required_accuracy
from policies._training import early_stop_accuracy


@dataclass(frozen=True)
class RunPlan:
    contract: RunContract
    run_key: str
    champion: ChampionRecord | None
    stop_accuracy: float
    num_workers: int
    cpus_per_worker: float
    worker_reason: str

    @classmethod
    def make(
        cls,
        contract: RunContract,
        *,
        run_key: str,
        champion: ChampionRecord | None,
        num_workers: int,
        worker_reason: str,
    ) -> RunPlan:
        required = required_accuracy(
            contract.target_score, contract.min_gain_over_champion, champion
        )
        return cls(
            contract=contract,
            run_key=run_key,
            champion=champion,
            stop_accuracy=early_stop_accuracy(stop_margin=contract.stop_margin, required=required),
            num_workers=num_workers,
            cpus_per_worker=contract.cpus_per_worker,
            worker_reason=worker_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": self.contract.to_dict(),
            "run_key": self.run_key,
            "champion": None
            if self.champion is None
            else {
                "version": self.champion.version,
                "accuracy": self.champion.accuracy,
                "cost": self.champion.cost,
            },
            "stop_accuracy": self.stop_accuracy,
            "num_workers": self.num_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "worker_reason": self.worker_reason,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunPlan:
        """The plan as ``plan`` wrote it (an XCom): trusted, not validated again."""
        champ = raw.get("champion")
        return cls(
            contract=RunContract.from_validated(raw["contract"]),
            run_key=str(raw["run_key"]),
            champion=None
            if not champ
            else ChampionRecord(
                str(champ["version"]),
                float(champ["accuracy"]),
                None if champ.get("cost") is None else float(champ["cost"]),
            ),
            stop_accuracy=float(raw["stop_accuracy"]),
            num_workers=int(raw["num_workers"]),
            cpus_per_worker=float(raw["cpus_per_worker"]),
            worker_reason=str(raw.get("worker_reason", "")),
        )
