from __future__ import annotations

import tomllib

import pytest
from click.testing import CliRunner

from bench import config, typed_toml
from bench.cli import main
from bench.config import ConfigError
from bench.run.matrix import expand
from tests.conftest import BENCH_TOML, REPO


def write(tmp_path, text: str):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return path


ALL_MODELS = "gan-mlp, dcgan, wgan-gp, sngan, vae-mlp, conv-vae, beta-vae, iwae"
ALL_SUITES = "quick, tune, fashion, mnist-cifar, full"
MINIMAL = """
[suites.s]
datasets = ["digits"]
models = ["gan-mlp"]
seeds = [0]
"""


def test_repository_config_loads_and_expands():
    cfg = config.load(BENCH_TOML)
    cells = expand(cfg, cfg.suite("quick"))
    assert [c.name for c in cells] == [
        "gan-mlp/digits/seed0",
        "gan-mlp/digits/seed1",
        "vae-mlp/digits/seed0",
        "vae-mlp/digits/seed1",
    ]


def test_defaults_live_on_the_fields(tmp_path):
    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.suite("s").train == config.TrainConfig()
    assert cfg.models["gan-mlp"].latent_dim == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL.replace('"gan-mlp"', '"gan-nope"'),
            "[suites.s] models: unknown model 'gan-nope'; known: " + ALL_MODELS,
        ),
        (
            MINIMAL.replace('"digits"', '"imagenet"'),
            "unknown dataset 'imagenet'; known: digits, mnist, fashion-mnist, cifar10",
        ),
        (MINIMAL + "[suites.s.train]\nstepz = 3\n", "[suites.s.train] unknown key 'stepz'; allowed: batch_size"),
        (MINIMAL + "[suites.s.train]\nsteps = 'many'\n", "[suites.s.train] steps must be an integer, got 'many' (str)"),
        (MINIMAL + "[suites.s.train]\nsteps = 0\n", "[suites.s.train] steps must be > 0, got 0"),
        (MINIMAL + "[suites.s.train]\nbatch_size = true\n", "batch_size must be an integer, got True"),
        (
            MINIMAL + "[suites.s.eval]\nencoder = 'vgg'\n",
            "encoder must be one of domain, inception, dinov2, dinov2-vitb14, dinov2-vits14; got 'vgg'",
        ),
        (MINIMAL + "[models.gan-mlp]\nlr = '1e-4'\n", "[models.gan-mlp] lr must be a number"),
        (
            MINIMAL + "[models.dcgan9]\nlr = 1\n",
            "[models.dcgan9] unknown model; known models: " + ALL_MODELS,
        ),
        (MINIMAL.replace("seeds = [0]", "seeds = [0, 0]"), "seeds has duplicates"),
        (MINIMAL.replace("seeds = [0]", "seeds = []"), "seeds must not be empty"),
        (MINIMAL + "[extra]\na = 1\n", "[top level] unknown key 'extra'"),
        (
            MINIMAL + "[suites.s.eval.ais]\nschedule = 'cosine'\n",
            "[suites.s.eval.ais] schedule must be one of sigmoid, linear; got 'cosine'",
        ),
        (MINIMAL + "[suites.s.eval.ais]\nsigmas = []\n", "[suites.s.eval.ais] sigmas must be a non-empty list"),
        (MINIMAL + "[suites.s.eval.ais]\nsteps = 1\n", "steps and validation_steps must be >= 2"),
        (MINIMAL + "[suites.s.eval.ais]\nleapfrogs = 3\n", "[suites.s.eval.ais] unknown key 'leapfrogs'"),
        ("[suites.s]\nmodels = ['gan-mlp']\n", "[suites.s] missing key(s): datasets"),
        ("[suites.s\n", "bench.toml is not valid TOML"),
    ],
)
def test_config_errors_name_file_table_and_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    assert expected in str(e.value)
    assert str(e.value).startswith("bench.toml")
    assert "\n" not in str(e.value)


def test_unknown_suite_lists_known_suites():
    with pytest.raises(ConfigError, match="unknown suite 'nope' in bench.toml; known suites: " + ALL_SUITES):
        config.load(BENCH_TOML).suite("nope")


def test_overrides_apply_to_the_suite_and_models():
    cfg = config.load(
        BENCH_TOML,
        ["train.steps=7", "seeds=[3, 4]", "models.gan-mlp.lr=0.1", "eval.encoder=domain", "features.domain.steps=5"],
        "quick",
    )
    suite = cfg.suite("quick")
    assert suite.train.steps == 7 and suite.seeds == (3, 4) and suite.eval.encoder == "domain"
    assert cfg.models["gan-mlp"].lr == 0.1 and cfg.domain.steps == 5
    assert config.load(BENCH_TOML).suite("quick").train.steps != 7  # the file is untouched


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps", "--set 'train.steps' is not KEY=VALUE"),
        ("train.steps=abc", "(with --set train.steps=abc): [suites.quick.train] steps must be an integer, got 'abc'"),
        ("train.steps=-5", "steps must be > 0, got -5"),
        ("nokey.x=1", "--set nokey.x: unknown key 'nokey'"),
        ("train.nokey=1", "[suites.quick.train] unknown key 'nokey'"),
        ("models.gan-mlp.nokey=1", "[models.gan-mlp] unknown key 'nokey'"),
        ("seeds=0", "seeds must be a list, got 0"),
    ],
)
def test_bad_overrides(override, expected):
    with pytest.raises(ConfigError) as e:
        config.load(BENCH_TOML, [override], "quick")
    assert expected in str(e.value)


def test_cell_key_covers_config_and_seed_but_not_suite():
    cfg = config.load(BENCH_TOML)
    a, b = expand(cfg, cfg.suite("quick"))[:2]  # gan-mlp seeds 0 and 1
    assert a.key("d") == a.key("d") and a.key("d") != b.key("d")
    assert a.key("d", with_seed=False) == b.key("d", with_seed=False)
    assert a.key("d") != a.key("other-digest")
    changed = expand(config.load(BENCH_TOML, ["models.gan-mlp.lr=0.5"], "quick"), cfg.suite("quick"))[0]
    assert changed.key("d") != a.key("d")
    import dataclasses

    assert dataclasses.replace(a, suite="other").key("d") == a.key("d")


def test_cell_key_covers_every_setting_and_the_protocol_version(monkeypatch):
    """Every eval setting is in the key (AIS's too, on or off), and so is the protocol version: cells of an earlier
    version are re-run, never mixed with the current ones."""
    import dataclasses

    from bench.config import AISConfig
    from bench.run import matrix

    off = config.load(BENCH_TOML, ["eval.ais.images=0"], "quick")
    cell = expand(off, off.suite("quick"))[0]
    other_ais = dataclasses.replace(cell, eval=dataclasses.replace(cell.eval, ais=AISConfig(chains=3)))
    assert other_ais.key("d") != cell.key("d")
    before = cell.key("d")
    monkeypatch.setattr(matrix, "PROTOCOL_VERSION", matrix.PROTOCOL_VERSION + 1)
    assert cell.key("d") != before


def test_encoders_of_a_cell_are_decided_in_one_place():
    """Cell.encoders: the scoring encoders (first one first), then the selection encoder when the periodic FID runs
    and it is not among them; the suite's preflight gathers the same per dataset."""
    from bench.run.matrix import encoders_by_dataset

    cfg = config.load(BENCH_TOML, ['eval.extra_encoders=["dinov2-vits14"]'], "quick")
    cells = expand(cfg, cfg.suite("quick"))
    assert cells[0].encoders() == ("domain", "dinov2-vits14")
    inception = config.load(BENCH_TOML, ["eval.encoder=inception", "train.eval_every=100"], "quick")
    cell = expand(inception, inception.suite("quick"))[0]
    assert cell.encoders() == ("inception", "domain")
    no_selection = config.load(BENCH_TOML, ["eval.encoder=inception", "train.eval_every=0"], "quick")
    assert expand(no_selection, no_selection.suite("quick"))[0].encoders() == ("inception",)
    assert encoders_by_dataset(expand(inception, inception.suite("quick"))) == {"digits": ("inception", "domain")}


def test_renamed_keys_are_a_clear_error():
    for setting, new in (
        ("eval.extractor=domain", "eval.encoder"),
        ('eval.extra_extractors=["dinov2"]', "extra_encoders"),
    ):
        with pytest.raises(ConfigError, match=f"is now {new.split('.')[-1]}"):
            config.load(BENCH_TOML, [setting], "quick")


def test_to_toml_round_trips():
    cfg = config.load(BENCH_TOML)
    cell = expand(cfg, cfg.suite("quick"))[0]
    assert tomllib.loads(typed_toml.to_toml(cell.as_dict())) == _lists(cell.as_dict())


def _lists(d):
    return {k: _lists(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def test_cli_unknown_suite_exits_2_with_one_line(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["run", "--suite", "no-such-suite"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown suite 'no-such-suite' in bench.toml; known suites: " + ALL_SUITES


def test_cli_bad_set_exits_2(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["run", "--suite", "quick", "--set", "train.steps=0"])
    assert result.exit_code == 2
    assert "steps must be > 0" in result.output and "Traceback" not in result.output


def test_cli_list(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for word in ("quick", "gan-mlp", "vae-mlp", "digits", "fashion-mnist", "cifar10", "mnist"):
        assert word in result.output


def test_repository_suites_cover_the_zoo():
    import baselines

    cfg = config.load(BENCH_TOML)
    assert {"quick", "fashion", "mnist-cifar", "full"} <= set(cfg.suites)
    zoo = tuple(baselines.MODELS)
    assert cfg.suite("fashion").models == zoo and cfg.suite("fashion").datasets == ("fashion-mnist",)
    assert cfg.suite("fashion").seeds == (0, 1, 2, 3, 4) and cfg.suite("fashion").eval.encoder == "domain"
    assert cfg.suite("mnist-cifar").datasets == ("mnist", "cifar10") and cfg.suite("mnist-cifar").models == zoo
    assert cfg.suite("mnist-cifar").eval.encoder == "inception"
    assert set(cfg.suite("full").datasets) == {"mnist", "fashion-mnist", "cifar10"}  # digits: too few for Inception
    # the papers' hyperparameters (issue 3)
    assert (cfg.models["wgan-gp"].gp_weight, cfg.models["wgan-gp"].n_critic, cfg.models["wgan-gp"].lr) == (10, 5, 1e-4)
    assert (cfg.models["wgan-gp"].beta1, cfg.models["wgan-gp"].beta2) == (0.0, 0.9)
    assert (cfg.models["sngan"].n_dis, cfg.models["sngan"].lr, cfg.models["sngan"].beta1) == (5, 2e-4, 0.0)
    assert (cfg.models["dcgan"].lr, cfg.models["dcgan"].beta1) == (2e-4, 0.5)
    assert cfg.models["iwae"].k == 50 and cfg.models["beta-vae"].beta > 1


def test_cli_list_shows_the_eight_models_and_the_suites(monkeypatch):
    import baselines

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    models = result.output.split("models:")[1].split("datasets:")[0]
    assert [line.split()[0] for line in models.strip().splitlines()] == list(baselines.MODELS)
    for suite in ("quick", "fashion", "mnist-cifar", "full"):
        assert f"\n  {suite} " in result.output


def test_domain_floors_are_a_table_by_dataset():
    cfg = config.load(BENCH_TOML)
    assert cfg.domain.floor("fashion-mnist") == 0.87 and cfg.domain.floor("digits") == 0.95
    cfg = config.load(BENCH_TOML, ["features.domain.min_test_accuracy.cifar10=0.4"], "quick")
    assert cfg.domain.floor("cifar10") == 0.4 and cfg.domain.floor("mnist") == 0.97
    assert config.load(BENCH_TOML, ["features.domain.min_test_accuracy=0.5"], "quick").domain.floor("mnist") == 0.5
    with pytest.raises(ConfigError, match=r"min_test_accuracy: unknown dataset 'svhn'; known: digits, mnist"):
        config.load(BENCH_TOML, ["features.domain.min_test_accuracy.svhn=0.5"], "quick")
    with pytest.raises(ConfigError, match=r"min_test_accuracy\[cifar10\] must be in \[0, 1\], got 1.5"):
        config.load(BENCH_TOML, ["features.domain.min_test_accuracy.cifar10=1.5"], "quick")


def test_config_toml_keeps_any_character():
    """config.toml is written by a TOML library: a character outside the BMP (an emoji) reads back unchanged (a
    JSON-escaped surrogate pair would not parse)."""
    data = {"cell": {"suite": "smile 🙂", "seeds": (0, 1)}, "eval": {"note": 'quote " and \\\\ backslash'}}
    assert tomllib.loads(typed_toml.to_toml(data)) == {"cell": {"suite": "smile 🙂", "seeds": [0, 1]},
                                                       "eval": {"note": 'quote " and \\\\ backslash'}}  # fmt: skip
