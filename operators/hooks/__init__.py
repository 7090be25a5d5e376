"""Hooks: the only place that builds clients for Ray (Jobs and Serve), MLflow and Spark.

Each endpoint resolves, in order: an Airflow connection (``slaflow_ray``, ``slaflow_mlflow``,
``slaflow_spark``) if one is defined, else ``slaflow.settings.Endpoints`` (environment
variables, then embedded defaults). Heavy libraries are imported when a client is built,
never at DAG-parse time. One hook per engine owns its client; nothing else touches it.
"""

from operators.hooks._common import EndpointError
from operators.hooks._mlflow import MlflowHook
from operators.hooks._ray import RayHook
from operators.hooks._serve import ServeHook
from operators.hooks._spark import SparkHook

__all__ = ["EndpointError", "MlflowHook", "RayHook", "ServeHook", "SparkHook"]
