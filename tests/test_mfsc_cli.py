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


# ---- bad input: one red line, exit 1, nothing written --------------------------------------------------------------

def _error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), res.output + res.stderr
    assert "Traceback" not in res.output + res.stderr
    return lines[0]


@pytest.mark.parametrize("args, what", [
    (["build", "{demo}", "--out", "{file}"], "an output folder to --out"),
    (["merge", "{dir}", "--out", "{file}"], "an output folder to --out"),
    (["publish", "{file}", "--dry-run", "{dir}/up"], "the output folder of `mfsc build`"),
    (["publish", "{dir}", "--dry-run", "{file}"], "a folder to --dry-run"),
    (["show", "{file}"], "the output folder of `mfsc build`"),
    (["demo-data", "{dir}/demo", "--visa-raw", "{file}"], "a folder to --visa-raw"),
])
def test_a_file_where_a_folder_goes_is_refused_before_any_work(tmp_path, demo_root, args, what):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    res = runner.invoke(app, [a.format(file=f, dir=tmp_path, demo=demo_root) for a in args])
    assert f"{f} is a file; give {what}" in _error_line(res)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and f.read_text() == "x"


@pytest.mark.parametrize("extra, words", [
    (["--captioner", "gpt4"], "unknown captioner 'gpt4'"),
    (["--num-shards", "2", "--shard-index", "5"], "--shard-index 5 must be in 0..1"),
    (["--shots", "0"], "--shots 0: at least one reference image"),
    (["--shots", "50"], "has 8 normal training images, fewer than k=50"),
    (["--classes", "bottle"], "class bottle not found"),
])
def test_build_refuses_bad_settings_before_writing(demo_root, tmp_path, extra, words):
    res = runner.invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "o"), "-q", *extra])
    assert words in _error_line(res)
    assert not (tmp_path / "o").exists()


def test_a_full_disk_is_one_line_naming_the_file(demo_root, tmp_path, monkeypatch):
    import errno

    import mfsc_builder.build as B

    target = tmp_path / "o" / "work" / "part.tmp"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(B, "run_build", full)
    line = _error_line(runner.invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "o"), "-q"]))
    assert os.strerror(errno.ENOSPC) in line and str(target) in line and "free disk space" in line


def test_show_an_unknown_image_prints_only_the_error(cli_build):
    res = runner.invoke(app, ["show", str(cli_build), "--image", "fabric/test/nope/000"])
    assert "no image record fabric/test/nope/000" in _error_line(res) and "--image id like fabric/" in res.stderr
    assert res.stdout == ""


# options that are simply off when not given
UNSET_MEANS_NOT_USED = {"out_dir", "config", "dry_run", "visa_raw"}


def _shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def test_every_option_has_a_one_line_help_with_its_default():
    from dataclasses import asdict

    import typer

    from mfsc_builder.build import BuildConfig

    defaults = asdict(BuildConfig())
    defaults.update(defaults.pop("captioner"))  # --captioner is captioner.name, --device captioner.device, ...
    defaults["captioner"] = defaults.pop("name")
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            if p.param_type_name != "option":
                continue
            where = f"mfsc {name} {p.opts[0]}"
            assert p.help and "\n" not in p.help and "[" not in p.help, where  # rich would eat "[x]"
            assert (p.default is not None or isinstance(p.show_default, str) or p.required
                    or p.name in UNSET_MEANS_NOT_USED), f"{where}: no default shown"
            if name == "build" and isinstance(p.show_default, str) and isinstance(defaults.get(p.name),
                                                                                  (int, float, str)):
                assert p.show_default == _shown(defaults[p.name]), f"{where}: help says {p.show_default}"


def test_a_build_the_model_did_not_caption_says_so(tmp_path, monkeypatch):
    """A model server that was down for the whole build leaves attribute fallbacks: one yellow line says so."""
    import datasets

    import mfsc_builder.build as B

    rows = [{"provenance": {"status": s}} for s in ("fallback", "ok", "retried", "fallback")]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
                         ).save_to_disk(str(tmp_path / "images"))
    summary = B.BuildSummary(out=tmp_path, images={"train": 3, "test": 1}, classes=["x"], resumed=False, computed={})
    monkeypatch.setattr(B, "run_build", lambda *a, **k: summary)
    res = runner.invoke(app, ["build", str(tmp_path), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "2 of 4 image records hold the attribute captioner's fields" in " ".join(res.stderr.split())
    rows[0]["provenance"]["status"] = "ok"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3])}).save_to_disk(str(tmp_path / "images"))
    res = runner.invoke(app, ["build", str(tmp_path), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0 and not res.stderr.strip()
