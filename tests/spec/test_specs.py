import pytest

from recstack.errors import ConfigError
from recstack.spec import list_model_configs, load_config, load_model_spec, load_topology

SHIPPED = ["dlrm-kaggle", "dlrm-terabyte", "dlrm-mlperf", "dlrm-dcnv2", "dlrm-bench",
           "rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien"]

KAGGLE_ROWS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
               27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def test_all_reference_configs_ship():
    assert set(SHIPPED) <= set(list_model_configs())


def test_kaggle_figures():
    spec, train = load_config("dlrm-kaggle")
    assert [t.rows for t in spec.tables] == KAGGLE_ROWS
    assert spec.bottom_mlp == [512, 256, 64, 16] and spec.top_mlp == [512, 256, 1]
    assert {t.dim for t in spec.tables} == {16}
    assert spec.embedding_rows == sum(KAGGLE_ROWS)
    assert spec.embedding_bytes == sum(KAGGLE_ROWS) * 16 * 4
    assert (train.optimizer, train.lr, train.batch_size) == ("sgd", 0.1, 128)


def test_dcnv2_multihot_and_caps():
    spec = load_model_spec("dlrm-dcnv2")
    assert max(t.rows for t in spec.tables) == 40_000_000
    assert [int(t.pooling) for t in spec.tables][:5] == [3, 2, 1, 2, 6]
    assert spec.lookups_per_sample == 214
    assert spec.interaction == "dcn" and spec.dcn_layers == 3 and spec.dcn_low_rank == 512


def test_deeprecsys_shapes():
    din = load_model_spec("din")
    assert len(din.tables_matching("behaviour")) == 250
    assert din.num_tables == 1 + 1 + 250 + 2
    mt = load_model_spec("mtwnd")
    assert mt.num_tables == 43 and mt.num_tasks == 3
    rmc2 = load_model_spec("rmc2")
    assert rmc2.num_tables == 32 and rmc2.tables[0].pooling == 120 and rmc2.tables[0].dim == 64


def test_scale_shrinks_rows_not_below_one():
    spec = load_model_spec("dlrm-kaggle", scale=0.001)
    assert spec.tables[2].rows == 10131
    assert spec.tables[8].rows == 1  # 3 rows * 0.001 rounds to 0: clamped to 1

def test_bad_yaml_field_named(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\ndense_features: 13\ntop_mlp: [1]\ntables:\n  - {name: a, rows: -5, dim: 4}\n")
    with pytest.raises(ConfigError, match=r"tables\.0\.rows"):
        load_model_spec(p)
    p.write_text("name: x\ndense_features: 13\ntop_mlp: [1]\nbogus: 1\ntables:\n  - {name: a, rows: 5, dim: 4}\n")
    with pytest.raises(ConfigError, match="bogus: unknown field"):
        load_model_spec(p)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_model_spec("nope/missing.yaml")
    with pytest.raises(ConfigError, match="neither a shipped"):
        load_model_spec("no-such-model")


def test_topology():
    assert load_topology("h100").world_size == 8
