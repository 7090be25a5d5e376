"""Scale of the data path: prepare and train on millions of rows, next to a plain loop.

    python benchmarks/data_scale.py [--rows 5000000] [--features 32] [--epochs 2] [--out FILE]

1. Writes a synthetic classification table (``--rows`` x ``--features`` float columns, 4
   classes) as Parquet, in chunks (the script never holds the table).
2. ``spark_jobs.prepare.run_prepare`` on it (Spark ``local[2]``): typing, exact stratified
   split, statistics.
3. slaflow's training job (``python -m ray_jobs.train``, the job ``TrainModelOperator`` submits:
   Ray Data shard per worker, per-epoch validation, deadline decision, MLflow logging,
   checkpoints) for ``--epochs`` epochs on one worker.
4. In the same Ray cluster, a plain Ray Train + Ray Data loop of the same model: the same
   ``build_model`` network and compile, ``iter_batches`` of the worker's shard into
   ``model.fit``, one ``ray.train.report`` per epoch, no validation, no checkpoint.

Reports per worker: peak RSS (which counts the object store's shared pages the worker maps
while it reads Ray Data blocks) and private memory (``RssAnon``) at each epoch's end, rows per
second (whole epoch, and the pass alone), and slaflow's
per-epoch control overhead (everything in an epoch but the pass over the shard). Results go to
``benchmarks/results/data_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

RAY_PORT = 6425
BATCH = 1024
CLASSES = 4


def write_table(path: Path, rows: int, features: int, seed: int = 0) -> float:
    """A linearly separable-ish 4-class table, written in 500k-row chunks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return 0.0
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(features, CLASSES)).astype("float32")
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        x = rng.normal(size=(n, features)).astype("float32")
        logits = 3.0 * (x @ weights) + rng.gumbel(size=(n, CLASSES)).astype("float32")
        table = pa.table({**{f"f{i}": x[:, i] for i in range(features)}, "label": logits.argmax(1)})
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    tmp.rename(path)
    return time.monotonic() - started


def prepare(source: Path, out: Path, home: Path) -> tuple[dict[str, Any], float]:
    from pyspark.sql import SparkSession

    from spark_jobs.prepare import run_prepare

    profile_file = out / "profile.json"
    if profile_file.exists():
        return json.loads(profile_file.read_text()), 0.0
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("bench-data-prepare")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    started = time.monotonic()
    try:
        profile = run_prepare(
            spark,
            source=str(source),
            label_column="label",
            output_dir=str(out),
            validation_fraction=0.05,
            test_fraction=0.05,
            seed=0,
            cache_dir=home,
            options={"task": "classification"},
        )
    finally:
        spark.stop()
    seconds = time.monotonic() - started
    profile_file.write_text(json.dumps(profile))
    return profile, seconds


def slaflow_spec(profile: dict[str, Any], home: Path, epochs: int) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from policies import RunContract
    from ray_jobs.specs import training_spec

    contract = RunContract.from_dict(
        {
            "data_source": "sklearn:digits",  # not read: the spec carries the prepared paths
            "model_name": "bench-data",
            "task": "classification",
            "target_metric": "accuracy",
            "target_value": 0.99,
            "deadline_s": 3600,
            "max_epochs": epochs,
            "max_workers": 1,
            "cpus_per_worker": 2,
            "hidden_units": [64, 64],
            "batch_size": BATCH,
            "learning_rate": 0.001,
            "seed": 0,
        }
    )
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-data") or None
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("bench-data", artifact_location=str(home / "artifacts"))
    )
    run = client.create_run(exp_id, run_name=f"data-scale-{int(time.time())}")
    return training_spec(
        contract,
        profile,
        run_name=f"data-scale-{run.info.run_id[:8]}",
        storage_path=str(home / "checkpoints"),
        tracking_uri=uri,
        mlflow_run_id=run.info.run_id,
        started_at=time.time(),
        stop_accuracy=1.01,  # never met: every epoch runs
        num_workers=1,
        throughput={"shape": "cpu", "epoch_s": {"1": 60.0}, "startup_s": 10.0},
        prior_epochs=0,
    )


def plain_loop(config: dict[str, Any]) -> None:
    """What a Ray Train user writes without slaflow: the same network, fed by Ray Data."""
    import resource

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import ray.train
    import tensorflow as tf

    from ray_jobs.model_format import build_model, compile_model
    from ray_jobs.train import anon_rss_mb

    profile = config["profile"]
    names = list(profile["feature_names"])
    model = build_model(profile, model="mlp", hidden_units=[64, 64], model_params={}, seed=0)
    compile_model(model, "classification", 0.001)
    shard = ray.train.get_dataset_shard("train")
    steps = int(profile["split_counts"]["train"]) // BATCH
    signature = (
        tf.TensorSpec([None, len(names)], tf.float32),
        tf.TensorSpec([None], tf.int32),
    )

    def batches() -> Any:
        for b in shard.iter_batches(batch_size=BATCH, batch_format="numpy", prefetch_batches=2):
            x = np.stack([b[n] for n in names], axis=1).astype("float32", copy=False)
            yield x, b["__label_index"].astype("int32")

    history = []
    for epoch in range(int(config["epochs"])):
        start = time.time()
        data = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        row = {
            "epoch": epoch + 1,
            "epoch_seconds": time.time() - start,
            "rows": steps * BATCH,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "anon_rss_mb": anon_rss_mb(),
        }
        ray.train.report(row)
        history.append(row)
    Path(config["out"]).write_text(json.dumps(history))  # one worker, one machine


def run_plain(spec_file: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig

    from ray_jobs.data_io import training_datasets
    from ray_jobs.tf_backend import tf_trainer

    spec = json.loads(Path(spec_file).read_text())
    ray.init(runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}})
    out = Path(spec["storage_path"]) / f"plain-{int(time.time())}.json"
    result = tf_trainer(
        plain_loop,
        train_loop_config={
            "profile": spec["profile"],
            "epochs": spec["max_epochs"],
            "out": str(out),
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
        run_config=RunConfig(
            name=f"plain-{int(time.time())}",
            storage_path=spec["storage_path"],
            worker_runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1"}},
        ),
        datasets=training_datasets(spec),
    ).fit()
    if result.error:
        raise result.error
    print("PLAIN_RESULT " + out.read_text(), flush=True)


def _run(cmd: list[str], env: dict[str, str], marker: str) -> Any:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
    raise SystemExit(f"{cmd} gave no result (exit {proc.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--home", default=str(REPO / ".slaflow/bench-data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/data_scale.json"))
    args = parser.parse_args()

    from lifecycle import machine

    from ray_jobs.entry import SPEC_URI_ENV, write_spec
    from slaflow.local_cluster import LocalRayCluster

    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    table = home / f"table_{args.rows}x{args.features}.parquet"
    gen_s = write_table(table, args.rows, args.features)
    print(f"[bench-data] table {table} ({gen_s:.0f}s)", flush=True)
    profile, prepare_s = prepare(table, home / f"prepared_{args.rows}x{args.features}", home)
    print(f"[bench-data] prepare {prepare_s:.1f}s: {profile['split_counts']}", flush=True)

    spec = slaflow_spec(profile, home, args.epochs)
    spec_file = home / "train_spec.json"
    write_spec(str(spec_file), spec)
    # A Ray head of its own (2 CPUs, its own ports), stopped alone at the end.
    cluster = LocalRayCluster(
        host="127.0.0.1",
        gcs_port=RAY_PORT,
        dashboard_port=RAY_PORT + 1850,
        num_cpus=2,
        state_dir=home / "ray",
    )
    cluster.start()
    env = {
        **os.environ,
        "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}",
        SPEC_URI_ENV: str(spec_file),
        "PYTHONPATH": str(REPO),
    }
    try:
        started = time.monotonic()
        trained = _run([sys.executable, "-m", "ray_jobs.train"], env, "SLAFLOW_RESULT ")
        slaflow_wall = time.monotonic() - started
        started = time.monotonic()
        plain = _run([sys.executable, __file__, "--plain", str(spec_file)], env, "PLAIN_RESULT ")
        plain_wall = time.monotonic() - started
    finally:
        cluster.stop()

    rows = int(profile["split_counts"]["train"]) // BATCH * BATCH
    hist = trained["history"]
    overheads = trained["overhead_seconds"]
    # Warm epochs only (the first carries TensorFlow's tracing and Ray Data's start-up). A
    # slaflow epoch is measured from one epoch's end to the next: the pass, the validation,
    # the decision, MLflow, the checkpoint and the report.
    cycles = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(hist, hist[1:], strict=False)]
    slaflow_rows_s = rows / (sum(cycles) / len(cycles)) if cycles else float("nan")
    warm = hist[1:] or hist
    warm_plain = plain[1:] or plain
    fit_rows_s = rows / (sum(h["fit_seconds"] for h in warm) / len(warm))
    plain_rows_s = rows / (sum(p["epoch_seconds"] for p in warm_plain) / len(warm_plain))
    overhead_share = [
        overheads[i] / (hist[i]["fit_seconds"] + overheads[i]) for i in range(len(overheads))
    ]
    result = {
        "machine": machine(),
        "rows": args.rows,
        "features": args.features,
        "batch_size": BATCH,
        "epochs": args.epochs,
        "train_rows": int(profile["split_counts"]["train"]),
        "table_bytes_float32": args.rows * args.features * 4,
        "generate_s": round(gen_s, 1),
        "prepare_s": round(prepare_s, 1),
        "slaflow": {
            "wall_s": round(slaflow_wall, 1),
            "epoch_seconds": [round(h["epoch_seconds"], 2) for h in hist],
            "cycle_seconds": [round(c, 2) for c in cycles],
            "fit_seconds": [round(h["fit_seconds"], 2) for h in hist],
            "overhead_seconds": [round(o, 3) for o in overheads],
            "overhead_share": [round(o, 4) for o in overhead_share],
            "rows_per_s_per_worker": round(slaflow_rows_s),
            "pass_rows_per_s_per_worker": round(fit_rows_s),
            "peak_rss_mb_per_worker": round(max(h["peak_rss_mb"] for h in hist)),
            "anon_rss_mb_per_worker": [round(h["anon_rss_mb"]) for h in hist],
            "best_val_accuracy": trained["best_val_accuracy"],
        },
        "plain_ray_train_ray_data": {
            "wall_s": round(plain_wall, 1),
            "epoch_seconds": [round(p["epoch_seconds"], 2) for p in plain],
            "rows_per_s_per_worker": round(plain_rows_s),
            "peak_rss_mb_per_worker": round(max(p["peak_rss_mb"] for p in plain)),
            "anon_rss_mb_per_worker": [round(p["anon_rss_mb"]) for p in plain],
        },
        "slaflow_over_plain_rows_per_s": round(slaflow_rows_s / plain_rows_s, 3),
        "max_overhead_share": round(max(overhead_share), 4) if overhead_share else None,
        "targets": {"slaflow_over_plain_rows_per_s": ">= 0.9", "max_overhead_share": "<= 0.05"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        run_plain(sys.argv[2])
    else:
        sys.exit(main())
