import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

import am
from am.errors import ConfigError
from am.settings import CONFIG_TEMPLATE, OptionError, Settings, config_template, load_settings
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]


def test_defaults_need_no_file_or_environment():
    settings = load_settings({}, environ={})
    assert settings == Settings()
    assert settings.backend == "local" and settings.tile_overlap >= 64


def test_precedence_option_over_environment_over_file_over_default(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("workers: 3\nbatch_size: 8\nregion: eu-west-1\n")
    env = {"AM_WORKERS": "5", "AM_BATCH_SIZE": "16"}
    settings = load_settings({"workers": 7}, environ=env, config_path=config)
    assert settings.workers == 7          # option
    assert settings.batch_size == 16      # environment
    assert settings.region == "eu-west-1" # file
    assert settings.tile_size == 512      # default


def test_template_documents_exactly_the_settings():
    template = yaml.safe_load((REPO / "config" / "config.yml.template").read_text())
    assert set(template) == {f.name for f in fields(Settings)}
    assert load_settings({}, environ={}, config_path=REPO / "config" / "config.yml.template") == Settings()


@pytest.mark.parametrize("text, match", [
    ("workers: [1, 2]\n", "workers"),
    ("unknown_key: 1\n", "unknown_key"),
    ("- a\n- b\n", "key: value"),
    ("workers: 0\n", "workers"),
    ("tile_size: 500\n", "tile_size"),
    ("tile_size: 1048576\n", "tile_size = 1048576 is not allowed: it must be a multiple of 32 from 64"),
    ("backend: gcp\n", "backend"),
    ("key: [unclosed\n", "YAML"),
    # Plain YAML keeps the last silently: the 0.5 set at the top would not apply.
    ("scale: 0.5\nworkers: 1\nscale: 1\n", r"bad.yml: key scale is given twice \(lines 1 and 3\); keep one$"),
    ("? [a, b]\n: 1\n", "(?s)cannot be read as YAML: .*unhashable key"),
])
def test_bad_config_files_name_the_key_and_file(tmp_path, text, match):
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings({}, environ={}, config_path=config)


def test_missing_config_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*template"):
        load_settings({}, environ={}, config_path=tmp_path / "nope.yml")


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="AM_WORKERS"):
        load_settings({}, environ={"AM_WORKERS": "many"})
    with pytest.raises(ConfigError, match="keep_job_data"):
        load_settings({}, environ={"AM_KEEP_JOB_DATA": "maybe"})


def test_job_timeout_grows_with_tiles_and_shrinks_with_workers():
    settings = Settings(workers=2)
    assert settings.job_timeout_s(2000) > settings.job_timeout_s(20)
    assert Settings(workers=4).job_timeout_s(2000) < settings.job_timeout_s(2000)


def test_tta_from_file_environment_and_option(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("tta: off\n")  # YAML reads a bare off as false; it means the mode
    assert load_settings({}, environ={}, config_path=config).tta == "off"
    config.write_text("tta: d4\n")
    assert load_settings({}, environ={}, config_path=config).tta == "d4"
    assert load_settings({}, environ={"AM_TTA": "flips"}, config_path=config).tta == "flips"
    assert load_settings({"tta": "off"}, environ={"AM_TTA": "flips"}).tta == "off"
    assert load_settings({}, environ={"AM_TTA": "rot180"}).tta == "rot180"
    with pytest.raises(ConfigError, match="tta = 'd8'.*off, rot180, flips, d4"):
        load_settings({}, environ={"AM_TTA": "d8"})
    config.write_text("tta: on\n")
    with pytest.raises(ConfigError, match="tta = 'on'"):
        load_settings({}, environ={}, config_path=config)


def test_a_config_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder; give a YAML file"):
        load_settings({}, environ={}, config_path=tmp_path)


@pytest.mark.parametrize("overrides, environ, config, where", [
    ({"scale": 0.0}, {}, "", "scale is set on the command line"),
    ({"workers": 0}, {"AM_WORKERS": "3"}, "", "workers is set on the command line"),
    ({"batch_size": -1}, {}, "", "batch_size is set on the command line"),
    # The option made a value from elsewhere wrong: still the option's fault.
    ({"tile_size": 128}, {}, "", "tile_overlap is set by default, tile_size on the command line"),
    ({"tile_size": 256}, {}, "tile_overlap: 200\n", "tile_overlap is set in config file"),
])
def test_a_refused_option_is_a_usage_error_naming_where_it_was_set(tmp_path, overrides, environ, config, where):
    path = None
    if config:
        path = tmp_path / "c.yml"
        path.write_text(config)
    with pytest.raises(OptionError, match="is not allowed") as caught:
        load_settings(overrides, environ=environ, config_path=path)
    assert where in str(caught.value) and str(caught.value).endswith("see --help")


@pytest.mark.parametrize("environ, config, where", [
    ({"AM_SCALE": "0"}, "", "scale is set in environment variable AM_SCALE"),
    ({}, "workers: 0\n", "workers is set in config file"),
    ({"AM_TILE_SIZE": "128"}, "", "tile_overlap is set by default, tile_size in environment variable AM_TILE_SIZE"),
])
def test_a_refused_value_from_the_environment_or_a_file_is_not_a_usage_error(tmp_path, environ, config, where):
    path = None
    if config:
        path = tmp_path / "c.yml"
        path.write_text(config)
    with pytest.raises(ConfigError, match="is not allowed") as caught:
        load_settings({"scale": None, "workers": None}, environ=environ, config_path=path)
    assert not isinstance(caught.value, OptionError)
    assert where in str(caught.value)


def test_a_value_the_option_cannot_take_is_a_usage_error():
    with pytest.raises(OptionError, match="the command line: workers = 'many' is not a valid int"):
        load_settings({"workers": "many"}, environ={})


def test_the_template_ships_in_the_package_and_the_repository_copy_is_the_same_file():
    """Errors point to the template, so an installed am-segm (no repository around it) must carry it."""
    setup = (REPO / "setup.py").read_text()
    assert '"config.yml.template"' in setup, "the template is not package data"
    assert CONFIG_TEMPLATE.parent == Path(am.__file__).parent
    assert (REPO / "config" / "config.yml.template").resolve() == CONFIG_TEMPLATE.resolve()


def test_config_template_option_prints_it_without_a_dataset_and_the_output_loads(tmp_path):
    done = subprocess.run([sys.executable, "-m", "am.pipeline", "--config-template"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == config_template()
    written = tmp_path / "config.yml"
    written.write_text(done.stdout)
    assert load_settings({}, environ={}, config_path=written) == Settings()


def test_a_missing_config_file_says_how_to_write_one(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; write the template with python -m am.pipeline "
                                          r"--config-template > config.yml"):
        load_settings({}, environ={}, config_path=tmp_path / "absent.yml")


def test_a_stale_am_config_is_named_as_the_source_of_the_path(tmp_path):
    from am.settings import config_path_from

    gone = tmp_path / "old.yml"
    with pytest.raises(ConfigError, match=rf"config file {gone}, named by the environment variable AM_CONFIG, does "
                                          r"not exist; unset AM_CONFIG or point it at a config file"):
        config_path_from(None, {"AM_CONFIG": str(gone)})
    assert config_path_from(str(gone), {"AM_CONFIG": "x"}) == gone  # --config wins, and is checked when read
    assert config_path_from(None, {}) is None
    gone.write_text("workers: 2\n")
    assert config_path_from(None, {"AM_CONFIG": str(gone)}) == gone
    result = subprocess.run([sys.executable, "-m", "am.pipeline", str(tmp_path / "ds")], capture_output=True,
                            text=True, timeout=120, env=clean_env(AM_CONFIG=str(tmp_path / "nope.yml")))
    assert result.returncode == 1 and "named by the environment variable AM_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_config_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    """--config=~/c.yml and a quoted AM_CONFIG="~/c.yml" reach us unexpanded; --model expands them too."""
    from am.settings import config_path_from

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yml").write_text("workers: 3\n")
    assert config_path_from("~/c.yml", {}) == tmp_path / "c.yml"
    assert config_path_from(None, {"AM_CONFIG": "~/c.yml"}) == tmp_path / "c.yml"
    assert load_settings({}, environ={}, config_path=config_path_from("~/c.yml", {})).workers == 3


def test_scale_is_a_factor_or_auto_wherever_it_is_set(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("scale: auto\n")
    assert load_settings({}, environ={}, config_path=config).scale == "auto"
    assert load_settings({}, environ={"AM_SCALE": " Auto "}).scale == "auto"
    assert load_settings({"scale": "auto"}, environ={"AM_SCALE": "0.5"}).scale == "auto"
    assert load_settings({}, environ={"AM_SCALE": "0.5"}).scale == 0.5
    config.write_text("scale: 2\n")
    assert load_settings({}, environ={}, config_path=config).scale == 2.0
    for bad in ("scale: big\n", "scale: yes\n", "scale: [1, 2]\n"):
        config.write_text(bad)
        with pytest.raises(ConfigError, match="scale = .* is not a valid scale \\(expected a number or auto\\)"):
            load_settings({}, environ={}, config_path=config)
    with pytest.raises(ConfigError, match="must be between 0.1 and 10, or auto"):
        load_settings({}, environ={"AM_SCALE": "20"})
    with pytest.raises(ConfigError, match="must be between 0.1 and 10, or auto"):
        Settings(scale="automatic")


def test_yaml_merge_keys_still_work_in_a_config_file(tmp_path):
    config = tmp_path / "merged.yml"
    config.write_text("<<: {workers: 3, tta: flips}\ntta: d4\n")
    settings = load_settings({}, environ={}, config_path=config)
    assert (settings.workers, settings.tta) == (3, "d4")


def test_a_misspelt_am_variable_is_warned_of_with_the_name_it_resembles(caplog):
    import logging

    import am.settings

    environ = {"AM_BAKEND": "aws", "AM_TILESIZE": "99", "AM_PRECISION": "fp16", "AM_WORKERS": "3", "AM_ZZZ": "1"}
    assert am.settings.unknown_am_variables(environ) == {"AM_BAKEND": "AM_BACKEND", "AM_TILESIZE": "AM_TILE_SIZE",
                                                         "AM_ZZZ": None}
    am.settings._warned_unknown.clear()
    with caplog.at_level(logging.WARNING, logger="am.settings"):
        assert load_settings({}, environ=environ).backend == "local"
        load_settings({}, environ=environ)  # said once per name, not at every load
    said = [r.getMessage() for r in caplog.records]
    assert said == ["environment variable AM_BAKEND is no am-segm setting and is ignored (did you mean AM_BACKEND?)",
                    "environment variable AM_TILESIZE is no am-segm setting and is ignored (did you mean "
                    "AM_TILE_SIZE?)",
                    "environment variable AM_ZZZ is no am-segm setting and is ignored"]


def test_a_value_refused_in_a_config_file_is_named_by_its_line(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("# workers on this machine\nbackend: local\n\nworkers: four\n")
    with pytest.raises(ConfigError, match=rf"^config file {config} line 4: workers = 'four' is not a valid int"):
        load_settings({}, environ={}, config_path=config)
    config.write_text("backend: local\nworkers: 0\n")
    with pytest.raises(ConfigError, match=rf"workers is set in config file {config} line 2"):
        load_settings({}, environ={}, config_path=config)
    config.write_text("backend: local\nwrokers: 2\n")
    with pytest.raises(ConfigError, match=rf"config file {config} has unknown key\(s\) wrokers \(line 2\);"):
        load_settings({}, environ={}, config_path=config)


def test_worker_threads_beyond_this_machines_cpus_are_refused_for_local_workers_only(monkeypatch):
    """100000 threads per worker exhausted the process limit; the job then failed as a network error."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with pytest.raises(ConfigError, match=r"setting worker_threads = 5 is not allowed: it must be at most this "
                                          r"machine's 4 CPUs for local workers .*environment variable "
                                          r"AM_WORKER_THREADS"):
        load_settings({}, environ={"AM_WORKER_THREADS": "5"})
    assert load_settings({}, environ={"AM_WORKER_THREADS": "4"}).worker_threads == 4
    # ECS tasks run on machines of their own.
    assert load_settings({"backend": "aws"}, environ={"AM_WORKER_THREADS": "5"}).worker_threads == 5


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("AM_INPUT_BUCKET", "my bucket", "setting input_bucket = 'my bucket' is not allowed: it must be an S3 bucket name"),
    ("AM_OUTPUT_BUCKET", "Masks", "setting output_bucket = 'Masks' is not allowed: it must be an S3 bucket name"),
    ("AM_INPUT_BUCKET", "ab", "3 to 63 lowercase letters, digits, dots and hyphens"),
    ("AM_INPUT_BUCKET", "-tiles", "starting and ending with a letter or digit"),
    ("AM_QUEUE_NAME", "my.tiles.fifo", "setting queue_name = 'my.tiles.fifo' is not allowed: it must be an SQS queue "
                                       "name: 1 to 80 letters, digits, hyphens and underscores"),
    ("AM_DEAD_LETTER_QUEUE_NAME", "x" * 81, "setting dead_letter_queue_name = "),
    ("AM_RESULTS_QUEUE_PREFIX", "r" * 70, "it must be 1 to 57 letters, digits, hyphens and underscores (each job's "
                                          "results queue is named <prefix>-<job id>, the job id 22 characters"),
    ("AM_RESULTS_QUEUE_PREFIX", "my results", "setting results_queue_prefix = 'my results' is not allowed"),
])
def test_bucket_and_queue_names_that_aws_would_refuse_are_refused_naming_the_setting(variable, value, words):
    """botocore's ParamValidationError came only after the endpoint had started, naming no setting."""
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={variable: value})
    assert words in str(caught.value) and f"environment variable {variable}" in str(caught.value), caught.value


def test_an_empty_bucket_in_a_config_file_is_named_by_its_line(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text('input_bucket: ""\n')
    with pytest.raises(ConfigError, match=rf"setting input_bucket = '' is not allowed.*config file {config} line 1"):
        load_settings({}, environ={}, config_path=config)


def test_the_longest_results_prefix_leaves_room_for_the_job_id_and_the_defaults_pass():
    from am.messages import new_job_id
    from am.settings import MAX_QUEUE_NAME

    longest = "r" * (MAX_QUEUE_NAME - 1 - len(new_job_id()))
    settings = load_settings({}, environ={"AM_RESULTS_QUEUE_PREFIX": longest, "AM_INPUT_BUCKET": "a.b-c.1",
                                          "AM_QUEUE_NAME": "Tiles_" + "q" * 74})
    assert len(f"{settings.results_queue_prefix}-{new_job_id()}") == MAX_QUEUE_NAME
    assert Settings() == load_settings({}, environ={})


@pytest.mark.parametrize("value", ["~nosuchuser-am-segm/c.yml", "~/c.yml"])
def test_a_tilde_without_a_home_folder_is_a_config_error_not_a_traceback(monkeypatch, value):
    from am.model_source import resolve_model
    from am.settings import config_path_from

    # "~nosuchuser" names no home folder; "~" none where HOME is unset and there is no passwd entry.
    def no_home(self):
        raise RuntimeError("Could not determine home directory.")

    if value.startswith("~/"):
        monkeypatch.setattr(Path, "expanduser", no_home)
    with pytest.raises(ConfigError, match=r"config file .*\(--config\): no home folder is known .*absolute path"):
        config_path_from(value, {})
    with pytest.raises(ConfigError, match=r"\(AM_CONFIG\): no home folder is known"):
        config_path_from(None, {"AM_CONFIG": value})
    with pytest.raises(ConfigError, match=r"^model .*: no home folder is known"):
        resolve_model(Settings(model=value), cache_dir=Path("/nonexistent"))
