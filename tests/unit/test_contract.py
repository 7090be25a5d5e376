from __future__ import annotations

import jsonschema
import pytest

from policies import FIELDS, ContractError, RunContract, contract_json_schema

pytestmark = pytest.mark.unit


def test_defaults_are_a_valid_contract() -> None:
    c = RunContract.defaults()
    assert c.deadline_s == 600.0
    assert c.data_source == "sklearn:digits"
    assert c.contract_version == 2
    assert RunContract.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("deadline_s", 0, "must be > 0"),
        ("deadline_s", -5, "must be > 0"),
        ("deadline_s", 10**9, "must be <= 604800"),
        ("deadline_s", "soon", "must be a number"),
        ("deadline_s", float("nan"), "finite"),
        ("target_accuracy", 1.0, "not between 0 and 1"),
        ("target_accuracy", 0, "not between 0 and 1"),
        ("target_value", 1.5, "not between 0 and 1"),
        ("target_metric", "mape", "is not one of"),
        ("model", "os.system", "does not match"),
        ("model", "train_loop:a.b:c; rm", "does not match"),
        ("model_params", [1], "JSON object"),
        ("feature_columns", "age", "list of column names"),
        ("min_gain_over_champion", -0.1, "must be >= 0"),
        ("max_workers", 0, "must be >= 1"),
        ("max_workers", 2.5, "whole number"),
        ("max_workers", True, "must be a integer"),
        ("latency_percentile", 97, "is not one of"),
        ("label_column", "", "non-empty string"),
        ("model_name", "bad name!", "does not match"),
        ("serving_node_resource", "two words", "does not match"),
        ("spark_master", "yarn; rm -rf /", "does not match"),
        ("spark_master", "spark://host", "does not match"),
        ("prepare_deadline_s", -1, "must be >= 0"),
        ("prepare_max_cores", 0, "must be >= 1"),
        ("training_mode", "mllib", "is not one of"),
        ("hidden_units", [], "needs 1 to 8 entries"),
        ("hidden_units", [64, "x"], "not a whole number"),
        ("hidden_units", "64,64", "list of whole numbers"),
        ("hidden_units", [0], "out of range"),
        ("test_fraction", 0.9, "must be <= 0.4"),
    ],
)
def test_bad_values_name_the_field_and_a_fix(field: str, value: object, words: str) -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict({field: value})
    err = info.value
    assert err.field == field
    assert words in err.problem
    assert str(err).startswith(f"contract field '{field}':")
    assert "Fix:" in str(err) and err.fix


@pytest.mark.parametrize(
    "model",
    [
        "mlp",
        "xgboost",
        "examples.digits_cnn:build",
        "train_loop:examples.digits_sgd_loop:train_loop_per_worker",
    ],
)
def test_model_takes_the_builtins_a_keras_builder_and_a_train_loop(model: str) -> None:
    assert RunContract.from_dict({"model": model}).model == model


def test_unknown_field_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict({"deadline": 60})
    assert info.value.field == "deadline"
    assert "deadline_s" in info.value.fix


def test_fractions_must_leave_rows_to_train_on() -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict({"validation_fraction": 0.3, "test_fraction": 0.35})
    assert info.value.field == "test_fraction"


def test_unsupported_version_is_rejected() -> None:
    with pytest.raises(ContractError) as info:
        RunContract.from_dict({"contract_version": 3})
    assert info.value.field == "contract_version"


def test_serving_node_resource_may_be_empty() -> None:
    assert RunContract.defaults().serving_node_resource == ""
    pinned = RunContract.from_dict({"serving_node_resource": "large"})
    assert pinned.serving_node_resource == "large"


@pytest.mark.parametrize(
    "master", ["", "local[*]", "local[4]", "local", "spark://h:7077", "spark://a.b:7077,c-d:7078"]
)
def test_spark_master_takes_local_and_standalone_urls(master: str) -> None:
    assert RunContract.from_dict({"spark_master": master}).spark_master == master
    jsonschema.validate(
        {**RunContract.defaults().to_dict(), "spark_master": master}, contract_json_schema()
    )


def test_spark_mllib_takes_no_tuning() -> None:
    assert RunContract.from_dict({"training_mode": "spark_mllib"}).training_mode == "spark_mllib"
    with pytest.raises(ContractError, match="tuning_trials.*spark_mllib"):
        RunContract.from_dict({"training_mode": "spark_mllib", "tuning_trials": 4})


def test_integers_given_as_floats_are_accepted_when_whole() -> None:
    assert RunContract.from_dict({"max_workers": 3.0}).max_workers == 3


def test_schema_describes_every_field_for_the_form() -> None:
    schema = contract_json_schema()
    props = schema["properties"]
    assert set(props) == {f.name for f in FIELDS} | {"contract_version"}
    for f in FIELDS:
        assert props[f.name]["title"] and props[f.name]["description"]
        assert props[f.name]["section"]
        assert props[f.name]["default"] == f.default
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "override",
    [
        {"deadline_s": 0},
        {"target_accuracy": 1.0},
        {"max_workers": 0},
        {"latency_percentile": 97},
        {"model_name": "bad name!"},
        {"hidden_units": []},
        {"test_fraction": 0.9},
        {"deadline": 5},
        {"spark_master": "spark://host"},
        {"prepare_deadline_s": -1},
    ],
)
def test_schema_and_python_validation_agree(override: dict[str, object]) -> None:
    """What the Airflow form rejects, the operators reject too (one source of truth)."""
    doc = {**RunContract.defaults().to_dict(), **override}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, contract_json_schema())
    with pytest.raises(ContractError):
        RunContract.from_dict(doc)


def test_schema_accepts_the_defaults() -> None:
    jsonschema.validate(RunContract.defaults().to_dict(), contract_json_schema())


@pytest.mark.parametrize(
    ("raw", "field_name", "words"),
    [
        ({"expected_rps": 50, "peak_rps": 10}, "peak_rps", "below expected_rps"),
        ({"serving_replicas": 3, "serving_max_replicas": 2}, "serving_max_replicas", "below"),
        ({"serving_tiers": "cpu_on_demand,tpu"}, "serving_tiers", "tpu"),
        ({"serving_tiers": "cpu on demand"}, "serving_tiers", "does not match"),
    ],
)
def test_serving_fields_are_checked_together(
    raw: dict[str, object], field_name: str, words: str
) -> None:
    with pytest.raises(ContractError) as err:
        RunContract.from_dict(raw)
    assert err.value.field == field_name and words in str(err.value)


def test_tuning_takes_keras_models_and_a_search_space_only_when_tuning() -> None:
    c = RunContract.from_dict(
        {
            "model": "examples.digits_cnn:build",
            "tuning_trials": 4,
            "search_space": "examples.digits_cnn:search_space",
        }
    )
    assert c.tuning and c.search_space == "examples.digits_cnn:search_space"
    assert RunContract.from_dict(
        {"tuning_trials": 2, "target_metric": "rmse", "target_value": 50}
    ).tuning
    for raw, field in (
        ({"model": "xgboost", "tuning_trials": 2}, "tuning_trials"),
        (
            {
                "model": "train_loop:examples.digits_sgd_loop:train_loop_per_worker",
                "tuning_trials": 2,
            },
            "tuning_trials",
        ),
        ({"search_space": "examples.digits_cnn:search_space"}, "search_space"),
        ({"search_space": "not a function", "tuning_trials": 2}, "search_space"),
    ):
        with pytest.raises(ContractError) as err:
            RunContract.from_dict(raw)
        assert err.value.field == field and "Fix:" in str(err.value)
