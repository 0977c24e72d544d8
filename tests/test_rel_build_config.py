"""``mfsc build --config``: every count is a whole number (issue 11, section 4, round two).

pydantic's lax mode reads ``shots: true`` as 1, ``seed: true`` as 1 and ``part_size: "8"`` as 8, and the crop
settings were not checked at all (``n_colours: "4"`` ended in a TypeError traceback, ``max_components: 2.5`` in a
slice error, ``border: true`` built with a border of 1.0). Each such value is now one line naming the file, the
key and what is expected, before any work; the detector side already did this.
"""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mfsc_builder.build_config import BuildConfig
from mfsc_builder.cli import app
from mfsc_builder.errors import BuildError


@pytest.mark.parametrize("data, key, expected", [
    ({"shots": True}, "shots", "an integer, got True"),
    ({"shots": "1"}, "shots", "an integer, got '1'"),
    ({"shots": 1.5}, "shots", "an integer, got 1.5"),
    ({"seed": True}, "seed", "an integer, got True"),
    ({"seed": -3}, "seed", "a value at least 0, got -3"),
    ({"seed": 2**40}, "seed", "a value at most 4294967295"),
    ({"num_shards": True}, "num_shards", "an integer, got True"),
    ({"shard_index": False}, "shard_index", "an integer, got False"),
    ({"part_size": "8"}, "part_size", "an integer, got '8'"),
    ({"captioner": {"batch_size": True}}, "captioner.batch_size", "an integer, got True"),
    ({"captioner": {"concurrency": "2"}}, "captioner.concurrency", "an integer, got '2'"),
    ({"captioner": {"max_retries": 1.0}}, "captioner.max_retries", "an integer, got 1.0"),
    ({"crop": {"work_size": True}}, "crop.work_size", "an integer, got True"),
    ({"crop": {"n_colours": "4"}}, "crop.n_colours", "an integer, got '4'"),
    ({"crop": {"max_components": 2.5}}, "crop.max_components", "an integer, got 2.5"),
    ({"crop": {"seed": True}}, "crop.seed", "an integer, got True"),
    ({"crop": {"border": True}}, "crop.border", "a number, got True"),
    ({"crop": {"border": float("nan")}}, "crop.border", "a finite number, got nan"),
    ({"crop": {"grabcut": 1}}, "crop.grabcut", "true or false, got 1"),
    ({"crop": [1, 2]}, "crop", "a mapping, got [1, 2]"),
])
def test_a_count_that_is_not_a_whole_number_is_one_line_naming_file_and_key(data, key, expected):
    with pytest.raises(BuildError) as e:
        BuildConfig.from_mapping(data, origin="build.yaml")
    assert str(e.value).startswith(f"build.yaml: key '{key}': expected {expected}"), str(e.value)


def test_an_unknown_crop_key_lists_the_known_ones():
    with pytest.raises(BuildError, match=r"build.yaml: unknown key 'crop.colours'; known: border, .*n_colours"):
        BuildConfig.from_mapping({"crop": {"colours": 4}}, origin="build.yaml")


def test_valid_crop_settings_keep_only_the_keys_given():
    """The class decides ``textured`` unless the file sets it: only the keys given are kept (None = not given)."""
    cfg = BuildConfig.from_mapping({"shots": 2, "crop": {"grabcut": True, "border": 0.05, "n_colours": 3}}, "b.yaml")
    assert cfg.shots == 2 and cfg.crop == {"border": 0.05, "grabcut": True, "n_colours": 3}
    assert cfg.crop_config(textured=True).textured and not cfg.crop_config().textured
    assert cfg.crop_config().n_colours == 3 and cfg.crop_config().max_components == 6
    again = cfg.override(crop={"border": 0.1})
    assert again.crop == {"border": 0.1, "grabcut": True, "n_colours": 3}


@pytest.mark.parametrize("line", ["shots: true", "seed: true", "part_size: true", "crop: {n_colours: '4'}"])
def test_mfsc_build_refuses_it_before_any_work(tmp_path, line):
    from fsad_data.synthetic import make_demo_data

    src = make_demo_data(tmp_path / "src", seed=0)
    cfg = tmp_path / "build.yaml"
    cfg.write_text(line + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["build", str(src), "--out", str(out), "--config", str(cfg)])
    assert res.exit_code == 1, res.output
    err = " ".join(res.stderr.split())
    assert err.startswith(f"error: {cfg}: key '") and "expected an integer" in err and "Traceback" not in res.output
    assert not out.exists()
