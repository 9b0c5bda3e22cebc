"""benchmarks/infer_throughput.py, tiny: its architectures come from the packaged recipes (deduplicated, bicubic and
the quickstart demos left out), and a run prints one row per setting with finite numbers, and traiNNer-redux's
figures in a table of their own."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import infer_throughput  # noqa: E402


def test_the_architectures_are_the_packaged_recipes_model_sections_once_each():
    notes = []
    archs = infer_throughput.select_archs(None, notes)
    keys = [a.key for a in archs]
    assert len(keys) == len(set(keys))
    labels = {a.label: a for a in archs}
    # RRDBNet-23 is in esrgan_x4, realesrnet_x4 and realesrgan_x4: one row, named by the recipe that writes it
    assert "esrgan_x4 (rrdbnet)" in labels
    assert set(labels["esrgan_x4 (rrdbnet)"].aliases) == {"realesrnet_x4", "realesrgan_x4"}
    assert "srresnet_x4 (srresnet)" in labels and "srgan_x4" in labels["srresnet_x4 (srresnet)"].aliases
    assert {"srcnn_x4 (srcnn)", "realesr_compact_x4 (compact)"} <= set(labels)
    assert not any(a.label.startswith("quickstart") or a.config.name == "bicubic" for a in archs)
    # an explicit config, and an architecture name meaning its recipes' configs
    (explicit,) = infer_throughput.select_archs(["compact:convs=16"], [])
    assert (explicit.config.name, explicit.config.convs, explicit.config.channels) == ("compact", 16, 64)
    assert [a.label for a in infer_throughput.select_archs(["rrdbnet"], [])] == ["esrgan_x4 (rrdbnet)"]


def test_a_tiny_run_prints_every_row_with_finite_numbers(tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = infer_throughput.main(["--size", "16x16", "--iters", "1", "--archs", "srcnn_x4", "compact:convs=4,channels=8",
                                  "--dtype", "fp32", "bf16", "--channels-last", "off", "on", "--compile", "off",
                                  "--device", "cpu", "--no-record", "--json", str(out)])
    printed = capsys.readouterr().out
    assert len(rows) == 2 * 2 * 2 and not any(r.error for r in rows)
    measured, theirs = printed.split("Not measured here: traiNNer-redux's published figures")
    table = [line for line in measured.splitlines() if line.startswith("| ") and "recipe (architecture)" not in line]
    assert len(table) == 8
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] in ("srcnn_x4 (srcnn)", "compact:convs=4,channels=8 (compact)")
        assert cells[1] in ("fp32", "bf16 autocast") and cells[2] in ("contiguous", "channels_last")
        assert cells[3] == "eager"
        fps, ms, params, gflop, tflops = (float(c.replace(",", "")) for c in cells[4:9])
        assert all(math.isfinite(v) and v > 0 for v in (fps, ms, params, gflop, tflops))
        assert abs(fps * ms - 1e3) < 1e-3 * fps * ms
        assert cells[10] == "1"
    # SRCNN 9-5-5 (64, 32 channels) on the bicubic x4 upscale: 2 x (3*64*81 + 64*32*25 + 32*3*25) MACs per HR pixel
    srcnn = next(r for r in rows if r.arch.startswith("srcnn"))
    assert abs(srcnn.gflop - 2 * (3 * 64 * 81 + 64 * 32 * 25 + 32 * 3 * 25) * 64 * 64 / 1e9) < 1e-9
    assert "| compact | fp16 | 136.54 | 210.66 |" in theirs and "RTX 4090" in theirs and "| span |" in theirs
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 8 and saved["theirs"]["source"]["commit"] == infer_throughput.THEIRS_SOURCE[2]
