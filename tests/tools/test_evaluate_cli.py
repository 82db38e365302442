"""tools.evaluate, tools.predict and `tools.plot similarity` on a real (tiny, random-init) checkpoint and real shards."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import tone, toy_sample, write_split
from tools import evaluate as evaluate_cli
from tools import plot as plot_cli
from tools import predict as predict_cli
from trainer.config import LossConfig, ModelConfig
from trainer.model import build_model

SR = 8000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random-init checkpoint (RUN/checkpoints/step_1) and a weak and a strong split."""
    root = tmp_path_factory.mktemp("eval_cli")
    freqs = [300.0, 500.0, 700.0, 900.0, 1100.0]
    weak = write_split(
        root,
        "evaluation",
        [
            (
                toy_sample(
                    f"clip {k}.wav",
                    "evaluation",
                    SR,
                    [f"a tone at {f:.0f} hertz", f"a steady beep number {k}"],
                ),
                tone(2.0, SR, f),
            )
            for k, f in enumerate(freqs)
        ],
        SR,
        relevance={"a tone at 300 hertz": ["clip 0.wav", "clip 1.wav"], "unknown query": ["clip 2.wav"]},
    )
    strong = write_split(
        root,
        "test",
        [
            (
                toy_sample(f"s{k}.wav", "test", SR, regions=[(f"beep {k}", 0.5, 1.5), ("silence", 1.5, 2.0)]),
                tone(2.0, SR, f, start=0.5, stop=1.5),
            )
            for k, f in enumerate(freqs)
        ],
        SR,
    )
    texts = [c for k in range(5) for c in (f"a tone at {freqs[k]:.0f} hertz", f"beep {k}")] + ["silence"]
    model = build_model(ModelConfig(), LossConfig(), sample_rate=SR, tokenizer_texts=texts)
    ckpt = root / "run" / "checkpoints" / "step_1"
    model.save_pretrained(ckpt / "model")
    return {"root": root, "ckpt": ckpt, "weak": weak, "strong": strong}


def test_help_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--help"])
    assert e.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--checkpoint", "x", "--data", "y", "--task", "captioning", "--out", "r.json"])
    assert e.value.code == 2 and "invalid choice: 'captioning'" in capsys.readouterr().err
    args = ["--data", str(tmp_path), "--task", "retrieval", "--out", str(tmp_path / "r.json")]
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "missing"), *args]) == 1
    assert capsys.readouterr().err == f"error: --checkpoint {tmp_path / 'missing'}: not a directory\n"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path), *args]) == 1
    assert "no model/ folder" in capsys.readouterr().err


def test_format_table():
    table = evaluate_cli.format_table(
        {"num_clips": 7, "t2a/R@1": 0.5, "t2a/medR": 3.0, "frame_ap": float("nan")}
    )
    lines = table.splitlines()
    assert lines[2].split() == ["num_clips", "7"]
    assert lines[3].split() == ["t2a/R@1", "50.00%"]
    assert lines[4].split() == ["t2a/medR", "3.0"]
    assert lines[5].split() == ["frame_ap", "n/a"]


def check_fractions(metrics: dict) -> None:
    for key, value in metrics.items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf.startswith("num_") or leaf in ("expected", "read", "skipped"):
            assert value == int(value) and value >= 0, key
        elif leaf == "medR":
            assert value >= 1, key
        else:
            assert 0.0 <= value <= 1.0, key


def test_retrieval_report_and_cache(setup, capsys):
    out = setup["root"] / "retrieval.json"
    argv = [
        "--checkpoint",
        str(setup["ckpt"]),
        "--data",
        str(setup["weak"]),
        "--task",
        "retrieval",
        "--out",
        str(out),
    ]
    assert evaluate_cli.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["task"] == "retrieval" and report["sample_rate"] == SR
    metrics = report["metrics"]
    assert metrics["num_clips"] == 5 and metrics["num_captions"] == 10
    assert (metrics["expected"], metrics["read"], metrics["skipped"]) == (5, 5, 0)
    for direction in ("t2a", "a2t", "t2a_multi"):
        for name in ("R@1", "R@5", "R@10", "mAP@10", "medR"):
            assert f"{direction}/{name}" in metrics and f"{direction}/{name}" in printed
    assert metrics["t2a_multi/num_queries"] == 1 and metrics["t2a_multi/num_unmatched_queries"] == 1
    assert metrics["t2a/R@10"] == 1.0  # 5 clips: every caption's clip is in the top 10
    check_fractions(metrics)
    cached = list((setup["ckpt"] / "eval_cache").glob("retrieval-*.npz"))
    assert len(cached) == 1
    # the second run reads the cached embeddings and gives the same report
    assert evaluate_cli.main(argv) == 0
    assert json.loads(out.read_text())["metrics"] == metrics


def test_temporal_report(setup):
    out = setup["root"] / "temporal.json"
    argv = ["--checkpoint", str(setup["ckpt"]), "--data", str(setup["strong"]), "--task", "temporal"]
    assert evaluate_cli.main([*argv, "--out", str(out), "--no-cache"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["num_clips"] == 5 and metrics["num_sed_queries"] == 6  # beep 0..4 + silence
    assert (metrics["expected"], metrics["read"], metrics["skipped"]) == (5, 5, 0)
    assert metrics["num_queries"] == 10
    for key in ("frame_auroc", "frame_ap", "psds1", "pauroc", "zs_acc"):
        assert key in metrics
    check_fractions(metrics)
    assert not list((setup["ckpt"] / "eval_cache").glob("temporal-*.npz"))  # --no-cache


def truncated_copy(split, dest):
    """A copy of `split` whose first shard is cut inside its 2nd sample (the rest of that shard is lost)."""
    import shutil
    import tarfile

    shutil.copytree(split, dest)
    shard = sorted(dest.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[2]
    shard.write_bytes(shard.read_bytes()[: second.offset_data + 10])
    return dest


@pytest.mark.parametrize("task", ["retrieval", "temporal"])
def test_truncated_shard_fails_unless_partial_is_allowed(setup, tmp_path, capsys, task):
    """A split with a truncated shard used to give metrics over part of the clips with exit 0 and no word of it."""
    split = truncated_copy(setup["weak" if task == "retrieval" else "strong"], tmp_path / "split")
    out = tmp_path / "report.json"
    argv = ["--checkpoint", str(setup["ckpt"]), "--data", str(split), "--task", task, "--out", str(out)]
    cached = set((setup["ckpt"] / "eval_cache").glob("*.npz"))
    assert evaluate_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: evaluation read 3 of 5 samples: 2 skipped as corrupt" in err and "--allow-partial" in err
    assert not out.exists()
    assert evaluate_cli.main([*argv, "--allow-partial"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert (metrics["expected"], metrics["read"], metrics["skipped"]) == (5, 3, 2)
    assert metrics["num_clips"] == 3
    assert "skipped" in capsys.readouterr().out  # the table shows the counts
    # a partial split is never cached: a later run over the repaired split must read it whole
    assert set((setup["ckpt"] / "eval_cache").glob("*.npz")) == cached


def test_nan_checkpoint_is_a_clear_error(setup, tmp_path, capsys):
    """Temporal evaluation of a diverged (NaN) checkpoint used to die inside sed_scores_eval."""
    import torch

    from trainer.model import AudioTextModel

    model = AudioTextModel.from_pretrained(setup["ckpt"] / "model")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_9"
    model.save_pretrained(ckpt / "model")
    for task, split in (("temporal", setup["strong"]), ("retrieval", setup["weak"])):
        argv = [
            "--checkpoint",
            str(ckpt),
            "--data",
            str(split),
            "--task",
            task,
            "--out",
            str(tmp_path / "r.json"),
        ]
        assert evaluate_cli.main([*argv, "--no-cache"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: the model gives non-finite") and "diverged" in err, err
        assert len(err.strip().splitlines()) == 1


def test_predict_cli(setup, tmp_path, capsys):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    for name, f in [("b beep.wav", 500.0), ("a tone.flac", 300.0), ("c.wav", 900.0)]:
        sf.write(audio_dir / name, tone(2.0, SR, f), SR)
    (audio_dir / "notes.txt").write_text("not audio")
    queries = tmp_path / "queries.csv"
    queries.write_text('caption\na tone at 300 hertz\n"beep, beep"\nsilence\n', encoding="utf-8")
    out = tmp_path / "sim.csv"
    argv = [
        "--checkpoint",
        str(setup["ckpt"]),
        "--queries",
        str(queries),
        "--audio-dir",
        str(audio_dir),
        "--out",
        str(out),
    ]
    assert predict_cli.main([*argv, "--batch-size", "2"]) == 0
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0] == ["caption", "a tone.flac", "b beep.wav", "c.wav"]
    assert [r[0] for r in rows[1:]] == ["a tone at 300 hertz", "beep, beep", "silence"]
    sim = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert sim.shape == (3, 3) and np.all(np.abs(sim) <= 1.0 + 1e-5)
    # other chunking gives the same similarities (equal-length clips: no padding differences)
    assert predict_cli.main([*argv, "--batch-size", "5"]) == 0
    again = np.array([[float(v) for v in r[1:]] for r in list(csv.reader(out.open(encoding="utf-8")))[1:]])
    np.testing.assert_allclose(again, sim, atol=1e-5)
    capsys.readouterr()
    queries.write_text("text\nx\n")
    assert predict_cli.main(argv) == 1
    assert "needs a 'caption' column" in capsys.readouterr().err


def test_plot_similarity_cli(setup, tmp_path):
    out = tmp_path / "plots"
    argv = [
        "similarity",
        "--checkpoint",
        str(setup["ckpt"]),
        "--data",
        str(setup["strong"]),
        "--num-clips",
        "2",
    ]
    assert plot_cli.main([*argv, "--out", str(out)]) == 0
    pngs = sorted(out.glob("similarity_*.png"))
    assert [p.name for p in pngs] == ["similarity_toy-s0.png", "similarity_toy-s1.png"]
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
