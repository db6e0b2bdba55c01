"""An AWS region name that botocore would refuse is refused first, naming where it was set: in the
settings, by the worker's environment and by am.scale (which used to fail silently or with a
botocore traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from am.errors import ConfigError
from am.settings import load_settings, region_problem
from am.transport.clients import ClientFactory
from am.worker.config import WorkerConfig

REPO = Path(__file__).resolve().parents[2]
BAD = ["bad!region", "", "eu west 1", "-us-east-1"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"])
def test_real_region_names_pass(region):
    assert region_problem(region, name="region") is None
    assert load_settings(environ={"AM_REGION": region}).region == region


def test_the_aws_tools_region_variables_fill_a_region_nothing_else_sets(tmp_path):
    # make deploy takes AWS_REGION: the pipeline then finds the stack where it was deployed.
    assert load_settings(environ={"AWS_REGION": "eu-west-1"}).region == "eu-west-1"
    assert load_settings(environ={"AWS_DEFAULT_REGION": "eu-west-2"}).region == "eu-west-2"
    assert load_settings(environ={"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-2"}).region == "eu-west-1"
    assert load_settings(environ={"AWS_REGION": "eu-west-1", "AM_REGION": "ap-south-1"}).region == "ap-south-1"
    config = tmp_path / "c.yml"
    config.write_text("region: sa-east-1\n")
    assert load_settings(environ={"AWS_REGION": "eu-west-1"}, config_path=config).region == "sa-east-1"
    assert load_settings({"region": "us-west-2"}, environ={"AWS_REGION": "eu-west-1"}).region == "us-west-2"
    with pytest.raises(ConfigError, match="setting region = 'bad!r' is not allowed.*environment variable AWS_REGION"):
        load_settings(environ={"AWS_REGION": "bad!r"})


def test_a_copied_template_leaves_the_region_to_the_aws_tools_variables(tmp_path):
    # The template's region is empty: copied as the README says, it pins no region, and a stack
    # deployed with AWS_REGION is looked for there.
    template = REPO / "config" / "config.yml.template"
    assert load_settings(environ={"AWS_REGION": "eu-west-1"}, config_path=template).region == "eu-west-1"
    assert load_settings(environ={}, config_path=template).region == "us-east-1"
    assert load_settings(environ={"AM_REGION": "ap-south-1", "AWS_REGION": "eu-west-1"},
                         config_path=template).region == "ap-south-1"


@pytest.mark.parametrize("region", BAD)
def test_settings_refuse_a_bad_region_naming_the_variable(region):
    with pytest.raises(ConfigError, match=r"setting region = .* is not allowed.*environment variable AM_REGION"):
        load_settings(environ={"AM_REGION": region})
    with pytest.raises(ConfigError, match="is not an AWS region name"):
        ClientFactory(region=region)


@pytest.mark.parametrize("region", [r for r in BAD if r])  # an empty AM_REGION is unset: us-east-1
def test_the_worker_refuses_a_bad_region(region):
    environ = {"AM_QUEUE_URL": "http://127.0.0.1:1/1/q", "AM_INPUT_BUCKET": "a", "AM_OUTPUT_BUCKET": "b",
               "AM_REGION": region}
    with pytest.raises(ConfigError, match="AM_REGION = .* is not an AWS region name"):
        WorkerConfig.from_environ(environ)


def test_am_scale_says_why_it_refuses_a_setting():
    result = subprocess.run([sys.executable, "-m", "am.scale", "--region", "bad!r", "--stack", "x", "status"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "setting region = 'bad!r' is not allowed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("environ", "match"), [
    ({"AM_OUTPUT_BUCKET": "am-segm-input"},
     r"setting input_bucket/output_bucket = \('am-segm-input', 'am-segm-input'\) is not allowed: "
     r"it must be two different buckets"),
    ({"AM_DEAD_LETTER_QUEUE_NAME": "am-segm-tiles"},
     r"setting queue_name/dead_letter_queue_name = .* two different queues"),
])
def test_settings_refuse_one_bucket_or_one_queue_for_two_roles(environ, match):
    # In one bucket a mask overwrites its tile (they share a key); a tile given up on must leave its queue.
    with pytest.raises(ConfigError, match=match):
        load_settings(environ=environ)
