"""``detector fit-folder``: the README's quickstart as a user runs it, on the synthetic set in the ``folder`` layout
(tiny backbone, random weights): captions, training, evaluation, then the predict command it prints, pasted;
a rerun finishes without redoing anything; a folder without masks gives an image-level evaluation whose image
threshold ``--threshold auto`` finds; each bad input one line."""
import csv
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.cli import app
from fsad_data import to_folder

TINY = ["--backbone", str(Path(__file__).parent / "assets" / "fgad-tiny-test.json"), "--pretrained", "none"]


@pytest.fixture(scope="module")
def folder(demo_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mine")
    to_folder(demo_root, root / "set")
    return root / "set"


def _run(args: list[str]):
    res = CliRunner().invoke(app, args)
    assert "Traceback" not in res.output, res.output
    return res


def test_quickstart_then_the_printed_predict_command_runs(folder, tmp_path, capfd):
    out = tmp_path / "run"
    res = _run(["fit-folder", str(folder / "pill_box"), "--out", str(out), "--shots", "2", *TINY,
                "--epochs", "1", "--image-epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "no CUDA GPU" not in res.output  # both epoch counts given: nothing CPU-sized to say
    assert "class pill_box, 2 shot(s) of 8 normal training images, 12 test images (6 anomalous)" in res.output
    for sub in ("captions/classes", "checkpoint/config.json", "eval/metrics.json", "eval/report.html"):
        assert (out / sub).exists(), sub
    command = next(line for line in res.output.splitlines() if line.startswith("next: ")).removeprefix("next: ")
    args = shlex.split(command.replace("IMAGES", str(folder / "pill_box" / "test" / "anomaly")))
    assert args[:2] == ["detector", "predict"] and "--threshold" in args and "auto" in args
    pred = _run(args[1:])
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader((out / "predictions" / "scores.csv").open()))
    assert len(rows) == 6 and all(r["anomalous"] in ("True", "False") for r in rows)  # the image threshold used

    again = _run(["fit-folder", str(folder / "pill_box"), "--out", str(out), "--shots", "2", *TINY,
                  "--epochs", "1", "--image-epochs", "1"])
    assert again.exit_code == 0, again.output
    assert "nothing to train" in again.output
    assert "(resumed)" in capfd.readouterr().out  # mfsc build runs as a command: its own output


def test_cpu_sized_epochs_are_said_and_used(folder, tmp_path, monkeypatch):
    from detector.run import fit_folder

    monkeypatch.setattr(fit_folder, "CPU_EPOCHS", {"epochs": 1, "image_epochs": 1})
    lines: list[str] = []
    cfg = fit_folder.FitFolderConfig(folder=folder / "hex_nut", out=tmp_path / "o", shots=1,
                                     train_overrides={"device": "cpu"})
    name, shots, fields, evaluate = fit_folder.plan(cfg, lines.append)
    assert (name, shots, evaluate) == ("hex_nut", 1, True)
    assert fields["epochs"] == 1 and fields["image_epochs"] == 1
    assert lines[0].startswith("fit-folder: no CUDA GPU, so CPU-sized training: 1 + 1 (pixel + image) epochs "
                               "instead of the paper's 100 + 50")
    config = tmp_path / "mine.yaml"  # epochs the user chose in a config file are kept on a CPU
    config.write_text("epochs: 7\n")
    lines.clear()
    mine = fit_folder.FitFolderConfig(folder=folder / "hex_nut", out=tmp_path / "o", config=config,
                                      train_overrides={"device": "cpu"})
    _, _, fields, _ = fit_folder.plan(mine, lines.append)
    assert "epochs" not in fields and fields["image_epochs"] == 1 and "1 + 1" not in lines[0]
    gpu = fit_folder.FitFolderConfig(folder=folder / "hex_nut", out=tmp_path / "o",
                                     train_overrides={"device": "cuda"})
    _, shots, fields, _ = fit_folder.plan(gpu, lines.append)
    assert "epochs" not in fields and shots == 4  # the paper's epochs (the recipe's) on a GPU; 4 shots


def test_folder_without_masks_is_evaluated_at_image_level_and_auto_finds_the_image_threshold(folder, tmp_path):
    flat = tmp_path / "part"
    for sub in ("train/normal", "test/normal"):
        shutil.copytree(folder / "hex_nut" / sub, flat / "normal", dirs_exist_ok=True)
    shutil.copytree(folder / "hex_nut" / "test" / "anomaly", flat / "anomaly")  # no masks/ folder
    out = tmp_path / "run"
    res = _run(["fit-folder", str(flat), "--out", str(out), "--shots", "1", *TINY, "--epochs", "1",
                "--image-epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "image-level" in res.output
    pred = _run(["predict", "--checkpoint", str(out / "checkpoint"), str(flat / "anomaly"), "--out",
                 str(tmp_path / "pred"), "--threshold", "auto"])
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader((tmp_path / "pred" / "scores.csv").open()))
    assert rows and all(r["anomalous"] in ("True", "False") for r in rows) and "mask_fraction" not in rows[0]


@pytest.mark.parametrize("args, says", [
    (["{set}"], "holds 3 classes"),
    (["{set}/pill_box", "--shots", "9"], "--shots 9: class 'pill_box' has 8 normal training image(s)"),
    (["{set}/pill_box", "--class", "nope"], "nope"),
])
def test_bad_input_is_one_line(folder, tmp_path, args, says):
    res = _run(["fit-folder", *[a.replace("{set}", str(folder)) for a in args], "--out", str(tmp_path / "o"), *TINY])
    assert res.exit_code != 0 and says in res.output
    assert not (tmp_path / "o").exists()  # nothing written before the plan holds
