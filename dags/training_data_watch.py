"""training_data_watch: emit the ``slaflow_training_data`` Asset when the dataset at
``SLAFLOW_TRAINING_DATA`` is new or changed, which starts ``ml_lifecycle`` on it.

Schedule: ``SLAFLOW_DATA_WATCH_SCHEDULE`` (cron, default every 10 minutes); trigger it by hand
to check now. An unchanged dataset skips the task and emits nothing.
"""

from __future__ import annotations

from airflow.sdk import DAG, CronTriggerTimetable

from operators.data import TrainingDataWatchOperator
from slaflow.settings import data_watch_schedule

with DAG(
    dag_id="training_data_watch",
    description="Start a retrain when the training data is new or has changed",
    schedule=CronTriggerTimetable(data_watch_schedule(), timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["slaflow", "data"],
    doc_md=__doc__,
) as dag:
    TrainingDataWatchOperator(task_id="check_training_data")
