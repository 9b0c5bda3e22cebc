"""The HTML report (`fastsr.report`): the page embeds the results exactly, its pictures are the panels at HR's
size under safe names, and in a real headless browser (Debian's chromium, through playwright) the page shows
the JSON's numbers, sorts on a header click, moves the before/after divider, and zooms the same region of
every panel at pixel scale, without an error or a network request.

The browser tests skip when chromium or playwright is missing, except under CI (the variable CI set), where
they fail: CI installs both (.ci/run, the dev extra)."""

from __future__ import annotations

import io
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastsr.errors import ImageError
from fastsr.evaluate import Score, SetResult, Shard, results_to_json
from fastsr.metrics import psnr, ssim
from fastsr.ops import imresize, quantize
from fastsr.report import HR_PANEL, LR_PANEL, Report, safe_name, script_json

SCALE = 2
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRICS = ("psnr", "ssim", "lpips")  # lpips (made up here) stands for a lower-is-better metric
WEIRD_SET = 'we</script><!--ird & "set"'
SETS = {"Set A": (["baby", "a/b", "a_b"], (40, 40)), WEIRD_SET: (["../up", "img 1"], (36, 28))}
META = {"scale": SCALE, "channel": "Y", "crop_border": SCALE, "degradation": "bicubic",
        "y": "BT.601 studio range (basicsr)"}


def _pair(seed: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR of random uint8 levels, its MATLAB-bicubic LR), so every pixel of a zoom is checkable."""
    g = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 256, (1, 3, *size), generator=g).float() / 255
    return hr, quantize(imresize(hr, scale=1 / SCALE))


def _outputs(hr: torch.Tensor, lr: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"Bicubic": quantize(imresize(lr, scale=SCALE)),
            "Noisy HR": quantize(hr + 0.05 * torch.randn(hr.shape, generator=g))}


def _scores(outputs: dict[str, torch.Tensor], hr: torch.Tensor) -> dict[str, dict[str, float]]:
    return {k: {"psnr": psnr(sr, hr, crop_border=SCALE).item(), "ssim": ssim(sr, hr, crop_border=SCALE).item(),
                "lpips": (sr - hr).abs().mean().item()} for k, sr in outputs.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report over two tiny sets; returns (folder, table, {(set, image): (lr, outputs, hr)})."""
    out = tmp_path_factory.mktemp("report")
    report, results, inputs, seed = Report(out, SCALE), [], {}, 0
    for set_name, (images, size) in SETS.items():
        scores = {}
        report.add_set(set_name, images)
        for image in images:
            seed += 1
            hr, lr = _pair(seed, size)
            outputs = _outputs(hr, lr, seed)
            report.add(set_name, image, lr, outputs, hr)
            inputs[set_name, image] = (lr, outputs, hr)
            for method, values in _scores(outputs, hr).items():
                score = scores.setdefault(method, Score(method, {m: [] for m in METRICS}))
                for m in METRICS:
                    score.values[m].append(values[m])
        results.append(SetResult(set_name, images, list(scores.values())))
    table = results_to_json(results, METRICS, META)
    assert report.finish(table) == out / "index.html"
    return out, table, inputs


class _Scripts(HTMLParser):
    """The text of each <script id=...> of a page."""

    def __init__(self):
        super().__init__()
        self.scripts, self._id = {}, None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._id = dict(attrs).get("id")
            self.scripts[self._id] = ""

    def handle_endtag(self, tag):
        self._id = None

    def handle_data(self, data):
        if self._id is not None:
            self.scripts[self._id] += data


def _page_data(out: Path) -> tuple[str, dict]:
    html = (out / "index.html").read_text()
    parser = _Scripts()
    parser.feed(html)
    return html, parser.scripts


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def _levels(x: torch.Tensor) -> np.ndarray:
    return (quantize(x[0]).permute(1, 2, 0) * 255).round().byte().numpy()


def _view(out: Path) -> dict:
    return json.loads(_page_data(out)[1]["view-data"])


# ---- without a browser ----

def test_page_embeds_the_table_exactly_and_safely(built):
    out, table, _ = built
    html, scripts = _page_data(out)
    assert json.loads(scripts["table-data"]) == table
    assert "<" not in scripts["table-data"] and WEIRD_SET not in html  # `</script>` in a name cannot end the tag
    assert not re.search(r"https?://", html), "the page must need no network"
    assert set(scripts) == {"table-data", "view-data", None}  # the data, then the inline script


def test_pictures_are_the_panels_at_hr_size_under_safe_unique_names(built):
    out, table, inputs = built
    view = _view(out)
    for set_name, result in table["sets"].items():
        entries = view["images"][set_name]
        assert list(entries) == result["images"]
        dirs = [e["dir"] for e in entries.values()]
        assert len({d.lower() for d in dirs}) == len(dirs)
        for image, entry in entries.items():
            lr, outputs, hr = inputs[set_name, image]
            assert entry["panels"] == [LR_PANEL, *outputs, HR_PANEL]
            assert entry["size"] == list(hr.shape[-2:])
            assert re.fullmatch(r"images/[A-Za-z0-9_-][A-Za-z0-9._-]*/[A-Za-z0-9_-][A-Za-z0-9._-]*", entry["dir"])
            expected = [imresize(lr, scale=SCALE), *outputs.values(), hr]
            for n, picture in enumerate(expected):
                np.testing.assert_array_equal(_pixels(out / entry["dir"] / f"{n}.png"), _levels(picture))
    assert not list(out.rglob("*.tmp")), "a temporary file was left"


def test_add_writes_pictures_at_once_and_drops_a_stale_page(tmp_path):
    (tmp_path / "index.html").write_text("an earlier run's page")
    report = Report(tmp_path, SCALE)
    assert not (tmp_path / "index.html").exists()
    report.add_set("s", ["x", "y"])
    hr, lr = _pair(0, (8, 6))
    report.add("s", "x", lr, _outputs(hr, lr, 0), hr)
    assert sorted(p.name for p in (tmp_path / "images" / "s" / "x").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert not (tmp_path / "index.html").exists()
    with pytest.raises(ValueError, match="every panel must be HR's size"):
        report.add("s", "y", lr, {"cropped": hr[..., :4]}, hr)


class _TwoProcesses(Shard):
    """Process `rank` of two sharing an evaluation, whose collective hands it `other`'s pictures."""

    def __init__(self, rank: int, other: Report):
        super().__init__(rank, 2)
        object.__setattr__(self, "other", other)

    def collect(self, part) -> list:
        theirs = self.other._pictures
        return [part, theirs] if self.rank == 0 else [theirs, part]


def _shared(folder_of_second: Path, tmp_path: Path) -> tuple[Report, Report]:
    """Two processes' reports of one set, each adding every other image, as `fastsr eval --processes 2`."""
    first, second = Report(tmp_path / "first", SCALE), Report(folder_of_second, SCALE)
    names = ["x", "a b", "a_b", "x.png"]  # "a b" and "a_b" collide: folders are named from the whole set
    for report in (first, second):
        report.add_set("s", names)
    for i, name in enumerate(names):
        hr, lr = _pair(i, (8, 6))
        (first if i % 2 == 0 else second).add("s", name, lr, _outputs(hr, lr, i), hr)
    return first, second


def test_several_processes_pictures_make_one_page_in_the_sets_order(tmp_path):
    first, second = _shared(tmp_path / "first", tmp_path)  # one folder, as on one machine
    table = {"metrics": ["psnr"]}
    assert second.finish(table, _TwoProcesses(1, first)) is None
    assert not (tmp_path / "first" / "index.html").exists()
    assert first.finish(table, _TwoProcesses(0, second)) == tmp_path / "first" / "index.html"
    entries = _view(tmp_path / "first")["images"]["s"]
    assert list(entries) == ["x", "a b", "a_b", "x.png"]
    assert [e["dir"] for e in entries.values()] == ["images/s/x", "images/s/a_b", "images/s/a_b-2", "images/s/x.png"]
    assert all((tmp_path / "first" / e["dir"] / "3.png").is_file() for e in entries.values())


def test_pictures_another_machine_wrote_elsewhere_are_refused_in_one_line(tmp_path):
    first, second = _shared(tmp_path / "second", tmp_path)  # two machines, two folders
    with pytest.raises(ImageError, match=r"the pictures of 2 image\(s\) that other processes wrote are not in it "
                                         r"\(images/s/a_b, \.\.\.\); on several machines"):
        first.finish({"metrics": ["psnr"]}, _TwoProcesses(0, second))
    assert not (tmp_path / "first" / "index.html").exists()


def test_names_become_safe_folder_names():
    assert safe_name("../up") == "_up"
    assert safe_name("img 1.png") == "img_1.png"
    assert safe_name("..") == "_"
    assert safe_name("x" * 200) == "x" * 80


def test_script_json_keeps_non_finite_values_and_never_ends_the_script():
    text = script_json({"psnr": math.inf, "nan": math.nan, "name": "</script><!-- & >"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"psnr": "Infinity", "nan": "NaN", "name": "</script><!-- & >"}


# ---- in a headless browser ----

def _launch_or_skip():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "the report's browser tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run them (.ci/run installs chromium)")
        pytest.skip(message)
    return sync_playwright()


@pytest.fixture(scope="module")
def browser():
    with _launch_or_skip() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Opened:
    """The report open in a fresh page, recording errors and any request outside the report's folder."""

    def __init__(self, browser, out: Path):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: r.url.startswith(out.as_uri()) or self.requests.append(r.url))
        self.page.goto((out / "index.html").as_uri())
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.zoom canvas')].every(c => c.dataset.drawn === 'yes')")

    def check_clean(self):
        assert self.errors == [], self.errors
        assert self.requests == [], self.requests


@pytest.fixture
def opened(browser, built):
    page = Opened(browser, built[0])
    yield page
    page.page.close()


def _fmt(metric: str, v: float) -> str:
    return f"{v:.2f}" if metric == "psnr" else f"{v:.4f}"


def _best(metric: str, values: list[float]) -> float:
    return min(values) if metric == "lpips" else max(values)


def _rows(page, section: int, table: str) -> list[list[str]]:
    return page.evaluate(
        "([s, t]) => [...document.querySelectorAll('section.set')[s].querySelectorAll(`table.${t} tbody tr`)]"
        ".map(tr => [...tr.cells].map(c => c.textContent + (c.classList.contains('best') ? '*' : '')))",
        [section, table])


def test_browser_tables_show_the_json_with_the_best_in_bold(opened, built):
    _, table, _ = built
    page = opened.page
    for s, (set_name, result) in enumerate(table["sets"].items()):
        assert page.locator("section.set h2").nth(s).text_content().startswith(set_name)
        methods = result["methods"]
        best = {m: _best(m, [v[m] for v in methods.values()]) for m in METRICS}
        assert _rows(page, s, "summary") == [
            [k, *(_fmt(m, v[m]) + ("*" if v[m] == best[m] else "") for m in METRICS)] for k, v in methods.items()]
        expected = []
        for i, image in enumerate(result["images"]):
            row = [image]
            for m in METRICS:
                values = [v["per_image"][m][i] for v in methods.values()]
                row += [_fmt(m, x) + ("*" if x == _best(m, values) else "") for x in values]
            expected.append(row)
        assert _rows(page, s, "per-image") == expected
    assert page.locator("table.summary .best").first.evaluate("c => getComputedStyle(c).fontWeight") == "700"
    caption = page.locator("table.summary caption").first.text_content()
    for part in ("×2", "degradation: bicubic", "Y channel (BT.601 studio range (basicsr))", "2-pixel border"):
        assert part in caption
    opened.check_clean()


def test_browser_header_click_sorts_best_first_then_reverses(opened, built):
    _, table, _ = built
    page = opened.page
    for metric, col in (("psnr", 1), ("lpips", 3)):
        header = page.locator("section.set").first.locator("table.summary th").nth(col)
        means = {k: v[metric] for k, v in table["sets"]["Set A"]["methods"].items()}
        best_first = sorted(means, key=means.get, reverse=metric != "lpips")
        header.click()
        assert [r[0] for r in _rows(page, 0, "summary")] == best_first
        header.click()
        assert [r[0] for r in _rows(page, 0, "summary")] == best_first[::-1]
    opened.check_clean()


def _clip(page) -> str:
    return page.locator(".viewer .overlay").first.evaluate("e => e.style.clipPath")


def test_browser_slider_and_divider_drag_change_the_revealed_width(opened):
    page = opened.page
    assert _clip(page) == "inset(0px 50% 0px 0px)"
    page.locator(".viewer .split").first.fill("25")
    assert _clip(page) == "inset(0px 75% 0px 0px)"
    box = page.locator(".viewer .compare").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.25 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], y, steps=5)
    page.mouse.up()
    right = float(re.fullmatch(r"inset\(0px ([\d.]+)% 0px 0px\)", _clip(page)).group(1))
    assert right == pytest.approx(20, abs=1)
    assert float(page.locator(".viewer .split").first.input_value()) == pytest.approx(80, abs=1)
    opened.check_clean()


def _regions(page) -> list[str]:
    return page.locator("section.set").first.locator(".zoom canvas").evaluate_all("cs => cs.map(c => c.dataset.region)")


def _shows(page, canvas, expected: np.ndarray) -> bool:
    """Whether the page's pixels around the canvas hold `expected` exactly (its box may start between two
    pixels, where the canvas is drawn snapped to one or the other)."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = math.floor(box["x"]) - 1, math.floor(box["y"]) - 1
    clip = {"x": x, "y": y, "width": expected.shape[1] + 3, "height": expected.shape[0] + 3}
    shown = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"))
    h, w = expected.shape[:2]
    return any(np.array_equal(shown[dy:dy + h, dx:dx + w], expected) for dy in range(4) for dx in range(4))


def test_browser_zoom_shows_one_region_of_every_panel_at_pixel_scale(opened, built):
    out, table, _ = built
    page = opened.page
    viewer = page.locator("section.set").first.locator(".viewer")
    viewer.locator(".factor").select_option("8")  # 24x24 HR pixels of the 40x40 image
    assert set(_regions(page)) == {"8,8,24,24"}  # centred
    box = viewer.locator(".compare").bounding_box()
    viewer.locator(".compare").click(position={"x": 0.1 * box["width"], "y": 0.9 * box["height"]})
    regions = _regions(page)
    assert len(regions) == 4 and set(regions) == {"0,16,24,24"}  # clamped to the bottom-left corner
    entry = _view(out)["images"]["Set A"]["baby"]
    canvases = viewer.locator(".zoom canvas")
    for n in range(4):
        region = _pixels(out / entry["dir"] / f"{n}.png")[16:40, 0:24]
        expected = region.repeat(8, axis=0).repeat(8, axis=1)  # each HR pixel an 8x8 block: no smoothing
        assert _shows(page, canvases.nth(n), expected), f"panel {n} does not show its region at 8x"
    assert canvases.first.evaluate("c => getComputedStyle(c).imageRendering") == "pixelated"
    opened.check_clean()


def test_browser_row_click_selects_the_image_and_screenshot(opened, built, tmp_path):
    out, table, _ = built
    page = opened.page
    section = page.locator("section.set").nth(1)
    row = section.locator("table.per-image tbody tr").nth(1)
    row.click()
    image = table["sets"][WEIRD_SET]["images"][1]
    entry = _view(out)["images"][WEIRD_SET][image]
    assert section.locator(".viewer h3").text_content() == image
    assert "selected" in row.get_attribute("class")
    assert section.locator(".viewer .overlay").get_attribute("src") == f"{entry['dir']}/1.png"  # first method
    assert section.locator(".viewer .base").get_attribute("src") == f"{entry['dir']}/3.png"  # HR
    section.locator(".viewer .left").select_option(label=LR_PANEL)
    assert section.locator(".viewer .overlay").get_attribute("src") == f"{entry['dir']}/0.png"
    page.wait_for_function(
        "() => [...document.querySelectorAll('.zoom canvas')].every(c => c.dataset.drawn === 'yes')")
    assert section.locator(".zoom canvas").evaluate_all("cs => cs.map(c => c.dataset.region)") == ["0,0,28,36"] * 4
    shot = tmp_path / "report.png"
    page.screenshot(path=shot, full_page=True)
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 1200 and im.height > 900
    opened.check_clean()


def test_eval_report_writes_the_page_of_its_table(photo_folder, tmp_path, capsys):
    """`fastsr eval --report DIR`: the page embeds the table `--json` writes (caption included) and a picture
    of every panel of every image."""
    from fastsr.cli import main

    out, results = tmp_path / "report", tmp_path / "results.json"
    assert main(["eval", "--model", "bicubic", "--data", str(photo_folder / "val"), "--report", str(out),
                 "--json", str(results), "--y", "matlab"]) == 0
    assert "comparison page" in capsys.readouterr().out
    table = json.loads(results.read_text())
    assert json.loads(_page_data(out)[1]["table-data"]) == table and "MATLAB rgb2ycbcr" in table["caption"]
    view = _view(out)
    for image in table["sets"]["val"]["images"]:
        shown = view["images"]["val"][image]
        assert shown["panels"] == [LR_PANEL, "Bicubic", HR_PANEL]
        assert all((out / shown["dir"] / f"{n}.png").is_file() for n in range(3))
