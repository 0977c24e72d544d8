"""fsad_data.config: the one settings-file reader and typed check (mfsc build --config, detector train --config),
and the shared CLI guard: every bad file or value is one line naming the file and key."""
import json
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass, field

import pytest
from typer.testing import CliRunner

import fsad_data
from fsad_data.config import MAX_BYTES, ConfigError, PositiveInt, read_config_file, to_config


@dataclass
class _Cfg:
    epochs: PositiveInt = 10
    lr: float = 0.1
    name: str = ""
    tags: list[str] = field(default_factory=list)
    tau: float | None = None
    flag: bool = False


@pytest.mark.parametrize("data,line", [
    ({"epochs": "abc"}, "c.yaml: key 'epochs': expected an integer, got 'abc'"),
    ({"epochs": 2.5}, "c.yaml: key 'epochs': expected an integer, got 2.5"),
    ({"epochs": 0}, "c.yaml: key 'epochs': expected a value at least 1, got 0"),
    ({"epochs": True}, "c.yaml: key 'epochs': expected an integer, got True"),  # counts are strict:
    ({"epochs": "3"}, "c.yaml: key 'epochs': expected an integer, got '3'"),  # pydantic's lax mode reads 1, 3
    ({"epochs": 3.0}, "c.yaml: key 'epochs': expected an integer, got 3.0"),
    ({"lr": float("inf")}, "c.yaml: key 'lr': expected a finite number, got inf"),
    ({"lr": "fast"}, "c.yaml: key 'lr': expected a number, got 'fast'"),
    ({"tags": "x"}, "c.yaml: key 'tags': expected a list, got 'x'"),
    ({"tau": float("nan")}, "c.yaml: key 'tau': expected a finite number, got nan"),
    ({"flag": "maybe"}, "c.yaml: key 'flag': expected true or false, got 'maybe'"),
    ({"epoch": 3}, "c.yaml: unknown key 'epoch'; known: epochs, lr, name, tags, tau, flag"),
])
def test_first_error_is_one_line_naming_file_and_key(data, line):
    with pytest.raises(ConfigError) as e:
        to_config(_Cfg, data, "c.yaml")
    assert str(e.value) == line


def test_valid_values_are_converted_and_dashes_accepted():
    cfg = to_config(_Cfg, {"epochs": 3, "lr": 1, "name": 7, "tags": ["a"], "flag": "true"}, "x")
    assert (cfg.epochs, cfg.lr, cfg.name, cfg.tags, cfg.flag) == (3, 1.0, "7", ["a"], True)


@pytest.mark.parametrize("name,content,words", [
    ("c.yaml", b"epochs: 3\n\xff\xfe\n", "c.yaml is not UTF-8 text (byte 0xff at offset 10)"),
    ("c.yaml", b"epochs: [1, 2\n", "c.yaml is not valid YAML (line 2, column 1)"),
    ("c.yaml", b"x: !!python/object:os.system {}\n", "could not determine a constructor for the tag"),
    ("c.yaml", b"- 1\n- 2\n", "c.yaml must hold a mapping of settings (key: value lines), not a list"),
    ("c.json", b"[1, 2]", "c.json must hold a mapping"),
    ("c.json", b"{\"a\": ", "c.json is not valid JSON"),
    ("c.yaml", b"1: 2\n", "c.yaml: key 1 is not text"),
])
def test_bad_files_are_one_short_line(tmp_path, name, content, words):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        read_config_file(p)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and str(p) in msg


def test_empty_file_is_no_settings_and_json_is_read(tmp_path):
    (tmp_path / "e.yaml").write_text("")
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 2}))
    assert read_config_file(tmp_path / "e.yaml") == {} and read_config_file(tmp_path / "c.json") == {"epochs": 2}


def test_billion_laughs_is_refused_before_memory_grows(tmp_path):
    """Nine levels of ten aliases each expand to 10**9 strings; the reader stops while composing (few aliases
    read, a few hundred KiB at most)."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p = tmp_path / "laughs.yaml"
    p.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    with pytest.raises(ConfigError, match="laughs.yaml.*more than 50 YAML aliases"):
        read_config_file(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20
    shared = tmp_path / "ok.yaml"  # a few anchors to share a block are fine
    shared.write_text("base: &b {lr: 0.1}\none: *b\ntwo: *b\n")
    assert read_config_file(shared)["two"] == {"lr": 0.1}


def test_oversized_file_is_refused_without_reading(tmp_path):
    p = tmp_path / "big.yaml"
    with open(p, "wb") as fh:
        fh.truncate(MAX_BYTES + 1)
    with pytest.raises(ConfigError, match=r"big.yaml: \d+ bytes is too big"):
        read_config_file(p)


def test_both_clis_print_a_bad_config_as_one_red_line(tmp_path):
    from detector.cli import app as detector_app
    from mfsc_builder.cli import app as mfsc_app

    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: abc\n")
    res = CliRunner().invoke(detector_app, ["train", "--config", str(bad)])
    assert res.exit_code == 1 and res.stderr.strip() == f"error: {bad}: key 'epochs': expected an integer, got 'abc'"
    bad.write_text("shots: [1]\n")
    res = CliRunner().invoke(mfsc_app, ["build", "--config", str(bad)])
    assert res.exit_code == 1 and res.stderr.strip() == f"error: {bad}: key 'shots': expected an integer, got [1]"
    assert "Traceback" not in res.output


def test_light_submodules_do_not_load_the_data_stack():
    """`mfsc --help` imports fsad_data.cli_guard: the package's data readers (numpy, OpenCV) load on first use."""
    code = ("import sys, fsad_data.cli_guard, fsad_data.atomic; assert 'cv2' not in sys.modules, 'cv2';"
            "from fsad_data import read_dataset, DataError; print(read_dataset.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "fsad_data.dataset"
    assert all(getattr(fsad_data, n) for n in fsad_data.__all__)


@pytest.mark.parametrize("helper, shown", [(".ev.tmp-18475-3bb694e0", "ev"), (".ck.lock", "ck"),
                                           (".scores.csv.1a2b3c4d.tmp", "scores.csv"), ("plain.png", "plain.png")])
def test_a_write_error_names_the_folder_the_user_gave_not_our_helper(tmp_path, capsys, helper, shown):
    """A read-only or full disk fails on our temporary or lock file beside --out: the line names --out itself."""
    import errno

    import typer

    from fsad_data.cli_guard import run_guarded

    def body():
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / helper))

    with pytest.raises(typer.Exit) as e:
        run_guarded(body, ())
    assert e.value.exit_code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: Read-only file system: {tmp_path / shown}; check that path"), err
