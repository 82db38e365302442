"""tools.plot: every figure is written as a non-empty PNG that opens as an image."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from tools.plot import (
    eval_groups,
    main,
    plot_compare,
    plot_similarity,
    read_eval,
    read_metrics,
    run_summary,
    similarity_examples,
)


def assert_png(path: Path, min_size: tuple[int, int] = (300, 300)) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
    assert image[..., :3].std() > 0.01  # something is drawn


def make_run(folder: Path, steps: int = 12, evals=(6, 12), scale: float = 1.0) -> Path:
    """A run folder as the trainer writes it: metrics.jsonl (weak/strong batches alternate) and eval/step_N.json."""
    (folder / "eval").mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        kind = "weak" if step % 2 else "strong"
        record = {"step": step, "loss": 3.0 / step, f"loss_{kind}": 3.0 / step, "lr": 1e-3 * min(1, step / 3)}
        record.update(samples_per_s=100.0 + step, batch_kind=kind, data_seen={"clotho": 8 * step})
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for step in evals:
        frac = scale * step / (steps + 1)
        report = {
            "step": step,
            "clotho-evaluation/num_clips": 7,
            "clotho-evaluation/t2a/R@1": frac,
            "clotho-evaluation/t2a/mAP@10": frac / 2,
            "clotho-evaluation/t2a/medR": 3.0,
            "clotho-evaluation/a2t/R@1": frac / 3,
            "tacos-test/psds1": frac / 4,
            "tacos-test/frame_auroc": 0.5 + frac / 3,
        }
        (folder / "eval" / f"step_{step}.json").write_text(json.dumps(report))
    return folder


def test_plot_similarity_writes_an_image(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["a dog barks twice in the distance while a car passes by on a wet road", "rain", "a bell rings"]
    sim = rng.uniform(-0.2, 0.3, size=(3, 250))
    sim[0, 50:100] = 0.9
    regions = [(2.0, 4.0, texts[0]), (6.0, 7.5, texts[0]), (1.0, 9.0, "rain")]
    path = plot_similarity(sim, 25.0, texts, regions, "clotho-Santa_Motor", tmp_path / "sim.png")
    assert_png(path)
    with pytest.raises(ValueError, match="not one of the plotted texts"):
        plot_similarity(sim, 25.0, texts, [(0.0, 1.0, "thunder")], "x", tmp_path / "bad.png")
    with pytest.raises(ValueError, match="expected"):
        plot_similarity(sim[:2], 25.0, texts, [], "x", tmp_path / "bad.png")


def test_curves_cli_writes_one_png_per_figure(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["curves", str(run)]) == 0
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == [
        "eval_clotho-evaluation.png",
        "eval_tacos-test.png",
        "loss.png",
        "lr.png",
        "throughput.png",
    ]
    for name in names:
        assert_png(run / "plots" / name)
    assert str(run / "plots" / "loss.png") in capsys.readouterr().out


def test_reading_run_outputs(tmp_path):
    run = make_run(tmp_path / "run")
    assert len(read_metrics(run)) == 12
    evals = read_eval(run)
    assert list(evals) == [6, 12] and "step" not in evals[6]
    groups = eval_groups(evals[12])
    assert sorted(groups) == ["clotho-evaluation", "tacos-test"]
    assert "clotho-evaluation/t2a/medR" not in groups["clotho-evaluation"]  # a rank, not a fraction
    assert eval_groups({"t2a/R@1": 0.5, "psds1": 0.2}) == {"eval": ["t2a/R@1", "psds1"]}
    assert run_summary(run) == evals[12]
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(run)


def test_compare_cli_from_runs_and_reports(tmp_path):
    a = make_run(tmp_path / "weak", scale=0.6)
    b = make_run(tmp_path / "weak_strong", scale=1.0)
    out = tmp_path / "compare.png"
    assert main(["compare", str(a), str(b), "--labels", "weak", "weak+strong", "--out", str(out)]) == 0
    assert_png(out)
    report = tmp_path / "report.json"  # a tools.evaluate report
    report.write_text(
        json.dumps({"task": "retrieval", "metrics": {"t2a/R@1": 0.3, "t2a/medR": 4.0, "a2t/R@1": 0.2}})
    )
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"task": "retrieval", "metrics": {"t2a/R@1": 0.4, "t2a/medR": 3.0, "a2t/R@1": 0.1}})
    )
    out2 = tmp_path / "reports.png"
    assert main(["compare", str(report), str(other), "--out", str(out2)]) == 0
    assert_png(out2)
    assert plot_compare({"x": {"t2a/R@1": 0.1}, "y": {"t2a/R@1": 0.2}}, tmp_path / "one.png").is_file()


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["curves", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.jsonl" in err and err.count("\n") == 1
    run = make_run(tmp_path / "run")
    assert main(["compare", str(run), str(run), "--labels", "a", "--out", str(tmp_path / "c.png")]) == 1
    assert "--labels" in capsys.readouterr().err
    assert (
        main(
            [
                "compare",
                str(run),
                str(run),
                "--labels",
                "a",
                "b",
                "--metrics",
                "t2a/nDCG",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
        == 1
    )
    assert "t2a/nDCG" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])


class FixedFrames(torch.nn.Module):
    """Stand-in with AudioTextModel's call interface: 10 frames of 2-D embeddings, texts "left"/"right"."""

    frame_rate = 5.0

    def tokenize(self, texts):
        ids = torch.tensor([0 if "left" in t else 1 for t in texts])[:, None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward(self, audio=None, audio_mask=None, input_ids=None, attention_mask=None):
        out = SimpleNamespace(frame_rate=self.frame_rate, logit_scale=torch.tensor(10.0))
        if audio is not None:
            frames = torch.zeros(audio.shape[0], 10, 2)
            frames[:, :5, 0] = 1.0
            frames[:, 5:, 1] = 1.0
            out.audio_frames = frames
            out.audio_clip = torch.nn.functional.normalize(frames.sum(1), dim=-1)
            out.frame_mask = torch.arange(10)[None] < audio_mask.sum(1, keepdim=True) // 100
        if input_ids is not None:
            out.text = torch.nn.functional.one_hot(input_ids[:, 0], 2).float()
        return out


def test_similarity_examples_glue(tmp_path):
    batch = {  # the reader's eval batch format: two clips, the second without regions
        "audio": torch.zeros(2, 1000),
        "audio_mask": torch.tensor([[True] * 1000, [True] * 800 + [False] * 200]),
        "keys": ["toy-a", "toy-b"],
        "captions": [["left then right"], ["right only"]],
        "durations": torch.tensor([2.0, 1.6]),
        "region_text": ["left", "right"],
        "region_clip": torch.tensor([0, 0]),
        "onsets": torch.tensor([0.0, 1.0]),
        "offsets": torch.tensor([1.0, 2.0]),
    }
    examples = similarity_examples(FixedFrames(), [batch], num_clips=5)
    assert [e["key"] for e in examples] == ["toy-a", "toy-b"]
    a, b = examples
    assert a["texts"] == ["left", "right"] and a["regions"] == [(0.0, 1.0, "left"), (1.0, 2.0, "right")]
    np.testing.assert_array_equal(a["sim"], [[1] * 5 + [0] * 5, [0] * 5 + [1] * 5])
    assert b["texts"] == ["right only"] and b["sim"].shape == (1, 8)  # captions when there are no regions
    for e in examples:
        assert_png(
            plot_similarity(
                e["sim"], e["frame_rate"], e["texts"], e["regions"], e["key"], tmp_path / f"{e['key']}.png"
            )
        )
