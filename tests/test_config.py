import pytest

from regene_ray.config import ConfigError, load_yaml
from regene_ray.run import RunConfig, load_run_config


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_valid_yaml_builds_typed_config(tmp_path):
    cfg = load_run_config(write(tmp_path, "classifier: {depth: 2, latent_l1: 1}\nseed: 3\n"))
    assert isinstance(cfg, RunConfig)
    assert cfg.classifier.depth == 2 and cfg.seed == 3
    assert isinstance(cfg.classifier.latent_l1, float)  # int promoted to float


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "classifier: {depht: 2}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml.*unknown key\(s\) classifier\.depht"):
        load_run_config(p)


def test_wrong_type_names_key_and_file(tmp_path):
    p = write(tmp_path, "classifier_training: {epochs: three}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: key 'classifier_training\.epochs' must be an integer"):
        load_run_config(p)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="'seed' must be an integer"):
        load_run_config(write(tmp_path, "seed: true\n"))


def test_invalid_value_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="latent_activation 'tanh' must be one of"):
        load_run_config(write(tmp_path, "classifier: {latent_activation: tanh}\n"))


def test_bad_yaml_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(write(tmp_path, "- 1\n- 2\n"))
