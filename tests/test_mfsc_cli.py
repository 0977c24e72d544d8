"""The `mfsc` CLI: fast --help, one-line errors with exit codes, build/show/publish/merge/demo-data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mfsc_builder.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_help_is_instant_and_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from mfsc_builder.cli import app\n"
        "sys.argv = ['mfsc', '--help']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'datasets', 'transformers', 'open_clip', 'cv2', 'pyarrow') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "COLUMNS": "120"}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    for cmd in ("build", "merge", "publish", "show", "demo-data"):
        assert cmd in res.stdout


def test_user_errors_are_one_red_line_and_exit_1(tmp_path):
    res = runner.invoke(app, ["build", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    res = runner.invoke(app, ["show", str(tmp_path)])
    assert res.exit_code == 1 and "run `mfsc build" in res.stderr


def test_usage_errors_exit_2(tmp_path):
    res = runner.invoke(app, ["build", str(tmp_path), "--shots", "many"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["nonsense"])
    assert res.exit_code == 2


def test_bad_crop_flag_and_bad_config_file(tmp_path, demo_root):
    res = runner.invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "o"), "--crop", "grabcut"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.stderr
    (tmp_path / "c.json").write_text("[1, 2]")
    res = runner.invoke(app, ["build", "--config", str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "c.json must hold a mapping" in res.stderr


def test_demo_data_with_visa_raw(tmp_path):
    res = runner.invoke(app, ["demo-data", str(tmp_path / "demo"), "--visa-raw", str(tmp_path / "visa")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "demo" / "pill_box" / "train" / "good").is_dir()
    assert (tmp_path / "visa" / "split_csv" / "1cls.csv").is_file()


@pytest.fixture(scope="module")
def cli_build(demo_root, tmp_path_factory) -> Path:
    """`mfsc build` through the CLI with a config file plus a flag override (one class, fabric)."""
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "build.yaml"
    cfg.write_text(f"source: {demo_root}\nclasses: [fabric]\nshots: 4\ndefect_vocab: dataset\n")
    out = tmp / "out"
    res = runner.invoke(app, ["build", "--config", str(cfg), "--out", str(out), "--shots", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout
    return out


def test_build_via_cli_uses_file_and_flags(cli_build):
    info = json.loads((cli_build / "build_info.json").read_text())
    assert info["config"]["shots"] == 2 and info["config"]["defect_vocab"] == "dataset"
    assert info["classes"] == ["fabric"] and info["images"] == {"train": 8, "test": 12}
    res = runner.invoke(app, ["build", "--config", str(cli_build.parent / "build.yaml"), "--out", str(cli_build),
                              "-q"])
    assert res.exit_code == 1 and "changed: shots" in res.stderr and "--force" in res.stderr


def test_show_prints_a_class_and_an_image_record(cli_build):
    res = runner.invoke(app, ["show", str(cli_build), "--class", "fabric"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "class fabric" in text and "texts for the detector" in text and "components" in text
    assert "image fabric/test/" in text and "anomaly" in text and "defect" in text  # an anomalous image
    assert "k=2 seed=0" in text
    res = runner.invoke(app, ["show", str(cli_build), "--class", "bottle"])
    assert res.exit_code == 1 and "it has: fabric" in res.stderr


def test_publish_dry_run_and_refused_push_without_repo(cli_build, tmp_path):
    import datasets

    res = runner.invoke(app, ["publish", str(cli_build), "--repo-id", "me/mfsc-demo", "--dry-run",
                              str(tmp_path / "up")])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "up" / "README.md").read_text()
    assert "license: cc0-1.0" in card and "test information leak" in card
    assert datasets.load_dataset(str(tmp_path / "up"), "classes")["train"][0]["class_name"] == "fabric"
    res = runner.invoke(app, ["publish", str(cli_build)])
    assert res.exit_code == 1 and "--repo-id" in res.stderr


def test_merge_via_cli_refuses_an_unfinished_part(tmp_path):
    (tmp_path / "p0").mkdir()
    res = runner.invoke(app, ["merge", str(tmp_path / "p0"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "not a finished `mfsc build` output" in res.stderr


def test_publish_push_via_cli_with_a_mocked_hub(cli_build, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"]))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload_folder", sorted(p.name for p in Path(kw["folder_path"]).rglob("*.parquet"))))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    res = runner.invoke(app, ["publish", str(cli_build), "--repo-id", "me/mfsc-demo", "--private"])
    assert res.exit_code == 0, res.output
    assert "published https://huggingface.co/datasets/me/mfsc-demo" in res.stdout
    assert calls[1] == ("create_repo", "me/mfsc-demo", True)
    assert calls[2] == ("upload_folder", ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet",
                                          "train-00000-of-00001.parquet"])
