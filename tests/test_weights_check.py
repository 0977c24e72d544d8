"""The demo's fast check for pretrained weights: one line, no minute of download retries."""

from detector.weights_check import main, weights_problem


def test_none_and_local_paths_need_nothing(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert weights_problem("ViT-B-16-plus-240", "none") is None
    assert weights_problem("ViT-B-16-plus-240", str(weights)) is None


def test_unknown_tag_is_named():
    problem = weights_problem("ViT-B-16-plus-240", "no_such_tag")
    assert problem is not None and "no_such_tag" in problem


def test_offline_and_not_cached_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    problem = weights_problem("ViT-B-16-plus-240", "laion400m_e32")
    assert problem is not None and "HF_HUB_OFFLINE" in problem
    assert main(["ViT-B-16-plus-240", "laion400m_e32"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "NOT meaningful" in out
