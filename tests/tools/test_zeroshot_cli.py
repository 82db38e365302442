"""tools.zeroshot on ESC-50's own metadata (real rows, tests/tools/fixtures/esc50) and on path,label CSVs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import tone
from tools import zeroshot as zs
from trainer.metrics import classification_metrics

ESC50 = Path(__file__).parent / "fixtures" / "esc50"


@pytest.fixture
def esc50(tmp_path):
    """ESC-50's layout: meta/esc50.csv (the fixture's real rows) and audio/ with a 5 s 44.1 kHz clip per row."""
    root = tmp_path / "ESC-50"
    shutil.copytree(ESC50 / "meta", root / "meta")
    (root / "audio").mkdir()
    with (root / "meta" / "esc50.csv").open() as f:
        for k, row in enumerate(csv.DictReader(f)):
            sf.write(
                root / "audio" / row["filename"], tone(5.0, 44100, 200.0 + 150 * k, noise=0.02, seed=k), 44100
            )
    return root


def test_esc50_meta(tiny_model_dir, esc50, tmp_path, capsys):
    folder, model = tiny_model_dir
    out = tmp_path / "zs"
    argv = [
        "--checkpoint",
        str(folder),
        "--audio-dir",
        str(esc50 / "audio"),
        "--labels",
        str(esc50 / "meta" / "esc50.csv"),
    ]
    assert zs.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "chirping_birds" in printed and "12 clips, 5 classes" in printed

    report = json.loads((out / "report.json").read_text())
    classes = ["chirping_birds", "dog", "rain", "thunderstorm", "vacuum_cleaner"]
    assert list(report["per_class"]) == classes and report["num_clips"] == 12 and report["skipped"] == []
    assert report["prompts"]["chirping_birds"] == "This is a sound of chirping birds."
    assert [v["clips"] for v in report["per_class"].values()] == [2, 2, 2, 3, 3]

    # The numbers are those of the model's own embeddings.
    with (esc50 / "meta" / "esc50.csv").open() as f:
        rows = [(r["filename"], r["category"]) for r in csv.DictReader(f)]
    audio = model.embed_audio([esc50 / "audio" / name for name, _ in rows])
    text = model.embed_text([report["prompts"][c] for c in classes])
    truth = np.array([classes.index(label) for _, label in rows])
    want = classification_metrics((audio @ text.T).numpy(), truth)
    for key in ("accuracy", "balanced_accuracy", "mAP"):
        assert report[key] == pytest.approx(want[key], abs=1e-6), key
    with (out / "predictions.csv").open() as f:
        predictions = list(csv.DictReader(f))
    assert [p["path"] for p in predictions] == [name for name, _ in rows]
    assert [p["predicted"] for p in predictions] == [classes[k] for k in want["predicted"]]
    assert np.mean([p["predicted"] == p["label"] for p in predictions]) == pytest.approx(report["accuracy"])
    png = (out / "confusion.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_path_label_csv_with_folders_and_missing_files(tiny_model_dir, tmp_path, capsys):
    """UrbanSound8K-style: paths with fold folders, a header row, a file that is listed but not there."""
    folder, _ = tiny_model_dir
    audio = tmp_path / "audio"
    for fold in ("fold1", "fold2"):
        (audio / fold).mkdir(parents=True)
    sf.write(audio / "fold1" / "100032-3-0-0.wav", tone(4.0, 22050, 300.0), 22050)
    sf.write(audio / "fold2" / "100263-2-0-117.wav", tone(4.0, 22050, 900.0), 22050)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label\nfold1/100032-3-0-0.wav,dog_bark\nfold2/100263-2-0-117.wav,children_playing\n"
        "fold2/missing.wav,dog_bark\n"
    )
    out = tmp_path / "zs"
    argv = [
        "--checkpoint",
        str(folder),
        "--audio-dir",
        str(audio),
        "--labels",
        str(labels),
        "--out",
        str(out),
    ]
    assert zs.main([*argv, "--template", "the sound of {}"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "missing.wav" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["num_clips"] == 2 and len(report["skipped"]) == 1
    assert report["prompts"] == {
        "children_playing": "the sound of children playing",
        "dog_bark": "the sound of dog bark",
    }


def test_read_labels_formats_and_errors(tmp_path):
    old = tmp_path / "esc50_old.csv"  # the header of ESC-50's esc50.csv before v2.0.0
    old.write_text(
        "filename,fold,category,category_name,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n"
    )
    assert zs.read_labels(old) == [("1-100032-A-0.wav", "dog")]
    plain = tmp_path / "plain.csv"
    plain.write_text("a.wav,cat\nb.wav,dog\na.wav,cat\n")  # no header; a repeated row counts once
    assert zs.read_labels(plain) == [("a.wav", "cat"), ("b.wav", "dog")]
    bad = {
        "a.wav,cat,extra\n": "expected 2 columns",
        "a.wav,cat\na.wav,dog\n": "labelled both 'cat' and 'dog'",
        "/abs/a.wav,cat\n": "is not a path relative to --audio-dir",
        "../a.wav,cat\n": "is not a path relative to --audio-dir",
        "a.wav,\n": "empty label",
    }
    for text, message in bad.items():
        plain.write_text(text)
        with pytest.raises(ValueError, match=message):
            zs.read_labels(plain)
    with pytest.raises(ValueError, match="needs exactly one"):
        zs.prompts(["dog"], "a sound")


def test_bad_arguments_are_one_line(tiny_model_dir, esc50, tmp_path, capsys):
    folder, _ = tiny_model_dir
    labels = str(esc50 / "meta" / "esc50.csv")
    cases = [
        (["--audio-dir", str(tmp_path / "none"), "--labels", labels], "not a directory"),
        (["--audio-dir", str(esc50 / "audio"), "--labels", str(tmp_path / "x.csv")], "file not found"),
        (
            ["--audio-dir", str(esc50 / "audio"), "--labels", labels, "--template", "sound"],
            "needs exactly one {}",
        ),
        (["--audio-dir", str(tmp_path), "--labels", labels], "no listed audio file could be decoded"),
    ]
    for extra, message in cases:
        assert zs.main(["--checkpoint", str(folder), "--out", str(tmp_path / "o"), *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
