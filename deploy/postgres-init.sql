-- The compose topology's PostgreSQL holds two databases: Airflow's metadata and MLflow's store.
CREATE DATABASE mlflow;
