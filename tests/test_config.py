"""Config: TOML round trip, dotted overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_flowvae.config import Config, config_diff, describe_config, load_config, parse_overrides
from pyro_flowvae.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_defaults_validate_and_round_trip_through_toml(tmp_path):
    config = Config()
    config.validate()
    config.guide.options = {"iaf": {"hidden_dims": [8, 8]}}
    config.data.limit = 100
    path = tmp_path / "c.toml"
    config.save(path)
    again = load_config(path)
    assert again == config
    assert config_diff(config, again) == {}


def test_dotted_overrides_from_cli_strings_and_from_dicts():
    config = load_config(
        None,
        [
            "guide.flow=iaf",
            "guide.num_flows=4",
            "model.hidden=[64, 32]",
            "train.lr=3e-4",
            "data.limit=none",
            "train.vectorize_particles=false",
        ],
    )
    assert (config.guide.flow, config.guide.num_flows, config.model.hidden) == ("iaf", 4, [64, 32])
    assert config.train.lr == pytest.approx(3e-4) and config.data.limit is None
    assert config.train.vectorize_particles is False
    same = Config().with_overrides(
        {
            "guide.flow": "iaf",
            "guide.num_flows": 4,
            "model.hidden": [64, 32],
            "train.lr": 3e-4,
            "train.vectorize_particles": False,
        }
    )
    assert config_diff(config, same) == {}
    nested = load_config(None, ["guide.options.spline.count_bins=6"])
    assert nested.guide.options == {"spline": {"count_bins": 6}}


def test_int_accepted_where_float_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


def test_shipped_mnist_configs_differ_only_in_the_guide():
    configs = {name: load_config(CONFIGS / f"mnist_{name}.toml") for name in ("mean_field", "planar", "iaf")}
    for name in ("planar", "iaf"):
        diff = config_diff(configs["mean_field"], configs[name])
        assert diff and all(key.startswith("guide.") for key in diff), diff
    lines = [(CONFIGS / f"mnist_{n}.toml").read_text().splitlines() for n in ("mean_field", "iaf")]
    guide_start = lines[0].index("[guide]")
    assert lines[0][:guide_start] == lines[1][:guide_start]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "guide.flow=planr",
            r"unknown flow 'planr'; choose guide\.flow from: householder, iaf, mean_field",
        ),
        ("guide.num_flows=-1", r"guide\.num_flows = -1 is out of range: it must be >= 0"),
        ("model.latent_dim=0", r"model\.latent_dim = 0 is out of range: it must be >= 1"),
        ("model.latent_dim=2.5", r"model\.latent_dim must be an integer, got 2\.5"),
        ("train.lr=0", r"train\.lr = 0\.0 is out of range: it must be > 0"),
        ("train.epochs=true", r"train\.epochs must be an integer"),
        ("model.likelihood=bernouli", r"did you mean 'bernoulli'\?\); choose one of: bernoulli, continuous"),
        ("model.hidden=[64, 0]", r"model\.hidden = \[64, 0\] is out of range"),
        (
            "train.epochz=3",
            r"unknown key train\.'epochz'.*did you mean train\.epochs\?.*valid keys: train\.annealing, train\.batch",
        ),
        ("trainer.epochs=3", r"unknown key 'trainer' in the config \(did you mean train\?\)"),
        ("guide.flow=planar", None),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, match):
    if match is None:
        load_config(None, [override, "guide.num_flows=2"])
        return
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_flow_needs_layers_and_npz_needs_a_path():
    with pytest.raises(ConfigError, match=r"guide\.num_flows = 0 but guide\.flow = 'iaf' needs at least 1"):
        load_config(None, ["guide.flow=iaf", "guide.num_flows=0"])
    with pytest.raises(ConfigError, match=r"data\.name = 'npz' needs data\.path"):
        load_config(None, ["data.name=npz"])


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_overrides(["guide.flow"])
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_overrides(["flow=iaf"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[guide]\nflow = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_every_key_is_documented():
    text = describe_config()
    for section, instance in vars(Config()).items():
        for key in vars(instance):
            assert f"{section}.{key} (" in text


def test_flow_options_are_per_family_and_checked_when_the_config_is_read():
    with pytest.raises(
        ConfigError,
        match=r"unknown key\(s\) guide\.options\.spline\.count_bin for flow 'spline' \(did you mean "
        r"guide\.options\.spline\.count_bins\?\).*accepts",
    ):
        load_config(None, ["guide.flow=mean_field", "guide.options.spline.count_bin=4"])
    with pytest.raises(ConfigError, match=r"guide\.options\.splin: unknown flow 'splin'"):
        load_config(None, ["guide.options.splin.count_bins=4"])
    with pytest.raises(ConfigError, match=r"guide\.options\.iaf must be a table"):
        load_config(None, ["guide.options.iaf=3"])
    # options of another family do not stop a swap: only the chosen family's table is used
    config = load_config(
        None, ["guide.flow=iaf", "guide.options.iaf.hidden_dims=[8]", "guide.options.spline.count_bins=4"]
    )
    from pyro_flowvae.models.vae import FlowVAE

    vae = FlowVAE.from_config(config.with_overrides(["guide.flow=spline", "guide.num_flows=1"]), 5)
    assert vae.guide.flow.blocks[0].nn.layers[0].out_features == 64  # spline's default width, not iaf's 8
    vae = FlowVAE.from_config(config.with_overrides(["model.latent_dim=4"]), 5)
    assert vae.guide.flow.blocks[0].nn.layers[0].out_features == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.name": "airline", "model.likelihood": "gaussian", "data.limit": 100}, r"data\.limit = 100 does not"),
        ({"data.name": "airline", "model.likelihood": "gaussian", "data.binarize": "static"}, r"data\.binarize"),
        ({"data.name": "healing_mnist", "data.valid_size": 10}, r"data\.valid_size = 10 does not apply"),
        ({"eval.level": 0.5}, r"eval\.level = 0\.5 does not apply to data\.name = 'mnist' \(image data\)"),
        ({"gp.kernel": "rbf"}, r"gp\.kernel = 'rbf' does not apply"),
    ],
)
def test_a_key_the_task_would_ignore_is_an_error_that_names_it(overrides, message):
    with pytest.raises(ConfigError, match=message + r".*remove it from the config"):
        load_config(None, overrides)


def test_every_choice_list_comes_from_its_registry():
    from dataclasses import fields

    from pyro_flowvae.config import Config
    from pyro_flowvae.guides.sequence import COVARIANCES, FRAME_ENCODERS
    from pyro_flowvae.infer.distributed import BACKENDS, DEVICES
    from pyro_flowvae.infer.optim import LR_SCHEDULES, OPTIMIZERS
    from pyro_flowvae.infer.svi import ANNEALINGS, ELBOS
    from pyro_flowvae.models.likelihoods import LIKELIHOODS
    from pyro_flowvae.models.nets import ACTIVATIONS
    from pyro_flowvae.priors import PRIORS
    from pyro_flowvae.tasks import TASKS

    registries = {
        "data.name": TASKS, "train.optimizer": OPTIMIZERS, "train.lr_schedule": LR_SCHEDULES, "train.elbo": ELBOS,
        "train.device": DEVICES, "model.likelihood": LIKELIHOODS, "model.activation": ACTIVATIONS,
        "model.prior": PRIORS, "guide.covariance": COVARIANCES, "distributed.backend": BACKENDS,
        "train.annealing": ANNEALINGS, "model.frame_encoder": FRAME_ENCODERS,
    }  # fmt: skip
    listed = {}
    for section in fields(Config):
        for f in fields(section.default_factory()):
            if "choices" in f.metadata:
                listed[f"{section.name}.{f.name}"] = tuple(f.metadata["choices"])
    assert set(listed) == set(registries) | {"data.binarize"}  # every choice list is accounted for
    for key, registry in registries.items():
        assert listed[key] == tuple(registry), key
    assert {TASKS[name].name for name in TASKS} == {"image", "sequence"}
