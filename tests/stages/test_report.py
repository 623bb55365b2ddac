"""`hebmctl report` on a tiny end-to-end run: every artifact's name and hash, every table value, the
images and curves, read back from the HTML with html.parser; damaged artifacts; two runs side by side;
the page rendered by headless Chromium.

The run is made by `pipeline` itself (which ends by writing RUN/report.html) from copies of the
session's tiny backbone, latents and prior (their fingerprints match, so those stages are skipped),
plus real sampling and evaluations. FID uses a stand-in feature network (TorchScript, the layout of
the original Inception file) so that three FIDs cost seconds: the real network is tested in
tests/stages/test_eval.py, and the report only reads the numbers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits  # installed with scikit-learn
from typer.testing import CliRunner

from hebmctl.cli import app
from hebmctl.io.charts import line_chart, nice_ticks, thin
from hebmctl.schemas import CacheLatentsConfig, EvalFidConfig, EvalReconConfig, SampleConfig
from hebmctl.schemas.report import ReportConfig
from hebmctl.stages import pipeline, report, sample

from tests.conftest import tiny_pretrain_config, tiny_prior_config

N_FID = 8


class Page(HTMLParser):
    """The parts of a report page the tests read: table rows, images, SVG lines, alerts, scripts, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[dict] = []  # {"attrs": {...}, "rows": [[(tag, attrs, text), ...]]}
        self.images: list[dict] = []
        self.polylines: list[dict] = []
        self.alerts: list[tuple[dict, str]] = []
        self.figures: list[tuple[dict, str]] = []
        self.scripts = 0
        self.external_refs: list[str] = []
        self._cell: list | None = None
        self._open: list[tuple[str, dict, list[str]]] = []  # alert divs and figures being read
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external_refs.append(attrs[key])
        if tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append({"attrs": attrs, "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1].setdefault("row_attrs", []).append(attrs)
        elif tag in ("td", "th") and self.tables and self.tables[-1]["rows"]:
            self._cell = [tag, attrs, ""]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "polyline":
            self.polylines.append(attrs)
        if (tag == "div" and "data-problem" in attrs) or tag == "figure":
            self._open.append((tag, attrs, []))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(tuple(self._cell))
            self._cell = None
        if self._open and tag == self._open[-1][0] and tag in ("div", "figure"):
            name, attrs, text = self._open.pop()
            (self.alerts if name == "div" else self.figures).append((attrs, " ".join("".join(text).split())))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data
        for _, _, text in self._open:
            text.append(data)

    def table(self, **attrs) -> list[list[tuple]]:
        """Rows of the one table whose attributes include `attrs` (underscores for dashes)."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        (found,) = [t for t in self.tables if wanted.items() <= t["attrs"].items()]
        return [row for row in found["rows"] if row and any(cell[0] == "td" for cell in row)]  # header rows left out

    def highlighted(self, **attrs) -> set[str]:
        """Row headers of the rows marked as differing between runs in the one table matching `attrs`."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        (found,) = [t for t in self.tables if wanted.items() <= t["attrs"].items()]
        return {row[0][2].strip() for row, a in zip(found["rows"], found["row_attrs"]) if row and "differs" in a.get("class", "")}

    def key_values(self, **attrs) -> dict[str, tuple]:
        """A two-column table as {row header: (cell text, cell attributes)}."""
        return {row[0][2].strip(): (row[1][2].strip(), row[1][1]) for row in self.table(**attrs)}


def cell_text(row: list[tuple], index: int) -> str:
    return " ".join(row[index][2].split())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifests(run: Path) -> dict[str, Path]:
    """Artifact name (folder inside the run) -> folder, for every manifest outside checkpoints."""
    return {p.parent.relative_to(run).as_posix(): p.parent for p in run.rglob("manifest.json") if "checkpoints" not in p.parts}


def stand_in_inception(path: Path) -> Path:
    """A TorchScript file with the original Inception file's layout (`.layers`: images -> [B, 2048, 1, 1])."""

    class Original(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Conv2d(3, 2048, 4))

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(0)
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Original()), str(path))
    return path


def copy_artifact(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints"))


@pytest.fixture(scope="module")
def tiny_run(tiny_backbone, tiny_latents, tiny_priors, tmp_path_factory) -> Path:
    """A complete run folder: backbone, latents, a diffusion prior, samples, recon and three FIDs, report.html."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    copy_artifact(tiny_backbone, run / "backbone")
    copy_artifact(tiny_latents, run / "latents")
    copy_artifact(tiny_priors["diffusion"], run / "priors" / "diffusion")
    weights = stand_in_inception(root / "stand-in-inception.pt")
    prior = str(run / "priors" / "diffusion")
    fid = dict(run=run, n=N_FID, ref_limit=N_FID, batch_size=N_FID, inception_weights=weights, device="cpu")
    plan = pipeline.PipelinePlan(
        pretrain=tiny_pretrain_config(run / "backbone", run=run),
        cache_latents=CacheLatentsConfig(run=run, limit=300, device="cpu"),
        priors=(tiny_prior_config(run / "backbone", run / "latents", run / "priors" / "diffusion", scheme="diffusion", run=run),),
        samples=tuple(SampleConfig(run=run, prior=p, n=8, batch_size=8, device="cpu") for p in ("gaussian", prior)),
        evals=(("eval_recon", EvalReconConfig(run=run, limit=32, device="cpu")),
               *((f"eval_fid:{Path(p).name}", EvalFidConfig(prior=p, **fid)) for p in ("gaussian", "recon", prior))),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):  # FID's 2048 x 2048 eigh: 1.6 s on one BLAS thread, 6-18 s on two when the cores are shared
            pipeline.run(plan)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def page(tiny_run) -> Page:
    return Page((tiny_run / "report.html").read_text())


def test_pipeline_writes_the_report_and_it_lists_every_artifact_with_its_hash(tiny_run, page):
    found = manifests(tiny_run)
    assert {"backbone", "latents", "priors/diffusion", "samples/gaussian", "samples/diffusion", "eval/recon-test",
            "eval/fid-gaussian", "eval/fid-recon", "eval/fid-diffusion"} <= set(found)
    rows = {cell_text(r, 0): r for r in page.table(id="artifacts")}
    assert set(rows) == set(found)
    for name, folder in found.items():
        assert cell_text(rows[name], 3) == sha256(folder / "manifest.json"), name
        assert cell_text(rows[name], 2) == "intact"
        files = {cell_text(r, 0): (cell_text(r, 2), cell_text(r, 3)) for r in page.table(data_artifact=name, **{"class": "files"})}
        outputs = json.loads((folder / "manifest.json").read_text())["outputs"]
        assert files == {o["name"]: ("ok", o["sha256"]) for o in outputs}, name
    assert page.scripts == 0 and page.external_refs == []
    assert [a for a, _ in page.alerts if a["data-problem"] not in ("absent",)] == []  # nothing damaged, stale or missing


def test_fid_table_and_closure_hold_the_numbers_of_result_json(tiny_run, page):
    fids = {p: json.loads((tiny_run / "eval" / f"fid-{p}" / "result.json").read_text())["fid"] for p in ("gaussian", "recon", "diffusion")}
    rows = {cell_text(r, 0): r for r in page.table(id="fid")}
    assert set(rows) == set(fids)
    for prior, value in fids.items():
        assert float(rows[prior][2][1]["data-value"]) == value  # the exact number, as a data attribute
        assert cell_text(rows[prior], 2) == f"{value:.6g}"  # and as shown
        assert cell_text(rows[prior], 1) == str(N_FID)
    (closure,) = page.table(id="closure-table")
    expected = (fids["gaussian"] - fids["diffusion"]) / (fids["gaussian"] - fids["recon"])
    assert cell_text(closure, 0) == "diffusion" and float(closure[6][1]["data-value"]) == pytest.approx(expected, rel=1e-12)


def test_every_evaluation_value_and_stage_config_is_on_the_page(tiny_run, page):
    for name in ("eval/fid-diffusion", "eval/recon-test"):
        result = json.loads((tiny_run / name / "result.json").read_text())
        shown = page.key_values(data_artifact=name, **{"class": "kv result"})
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(shown[key][1]["data-value"]) == value, (name, key)
            elif isinstance(value, str):
                assert shown[key][0] == value, (name, key)
        assert shown["kl_per_layer_nats" if "recon" in name else "fid"][0]
    config = page.key_values(data_artifact="priors/diffusion", **{"class": "kv config"})
    assert config["scheme"][0] == "diffusion" and config["steps"][0] == "6" and config["width"][0] == "16"


def test_images_are_inlined_byte_for_byte(tiny_run, page):
    by_file = {(f["data-artifact"], f["data-file"]): f for f, _ in page.figures if "data-file" in f}
    inlined = {(img["alt"].rsplit("/", 1)[0], img["alt"].rsplit("/", 1)[1]): img["src"] for img in page.images}
    assert page.images and all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    expected = [("backbone", "recon_grid.png"), ("backbone", "prior_samples.png"), ("samples/gaussian", "grid.png"),
                ("samples/diffusion", "grid.png"), ("eval/fid-diffusion", "grid.png"), ("eval/recon-test", "recon_grid.png")]
    for artifact, name in expected:
        assert (artifact, name) in by_file
        data = base64.b64decode(inlined[(artifact, name)].removeprefix("data:image/png;base64,"))
        assert hashlib.sha256(data).hexdigest() == sha256(tiny_run / artifact / name)


def test_training_curves_are_svg_lines_with_one_point_per_logged_step(tiny_run, page):
    def logged(name):
        return len((tiny_run / name / "metrics.jsonl").read_text().splitlines())

    lines = {(p["data-label"]): int(p["data-points"]) for p in page.polylines}
    assert lines["loss"] in (logged("backbone"), logged("priors/diffusion"))
    assert lines["z1"] == lines["z2"] == lines["z3"] == logged("backbone")  # KL per layer
    assert lines["energy_gap"] == logged("priors/diffusion")


def test_machine_and_time_come_from_the_manifests(tiny_run, page):
    backbone = json.loads((tiny_run / "backbone" / "manifest.json").read_text())["metrics"]
    rows = {cell_text(r, 0): r for r in page.table(id="timing")}
    seconds = float(rows["backbone"][3][1]["data-value"])
    assert seconds == pytest.approx(backbone["train_wall_s"] + backbone["eval_wall_s"])
    assert "device cpu" in cell_text(rows["backbone"], 5)


@pytest.fixture
def damaged_run(tiny_run, tmp_path) -> Path:
    """A copy of the run with a changed grid, an unreadable evaluation manifest, a replaced parent and a half-written prior."""
    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    grid = run / "samples" / "diffusion" / "grid.png"
    grid.write_bytes(bytes(255 - b for b in grid.read_bytes()))  # same size, other bytes
    (run / "eval" / "recon-test" / "manifest.json").write_text("{ not json")
    (run / "backbone" / "metrics.jsonl").unlink()
    latents = run / "latents" / "manifest.json"
    latents.write_text(latents.read_text() + "\n")  # still valid, but not the manifest the prior was trained on
    (run / "priors" / "half").mkdir()
    return run


def test_damaged_artifacts_show_as_damaged_not_as_missing_data(damaged_run):
    out = report.run(ReportConfig(runs=(damaged_run,)))
    page = Page(out.read_text())
    status = {cell_text(r, 0): cell_text(r, 2) for r in page.table(id="artifacts")}
    assert status["samples/diffusion"] == status["eval/recon-test"] == status["backbone"] == "damaged"
    assert status["priors/half"] == "incomplete" and status["samples/gaussian"] == "intact"
    alerts = {(a["data-problem"], a.get("data-artifact")): text for a, text in page.alerts}
    assert "grid.png: sha256 differs" in alerts[("damaged", "samples/diffusion")]
    assert "not a valid JSON object" in alerts[("damaged", "eval/recon-test")]
    assert "metrics.jsonl: missing" in alerts[("damaged", "backbone")]
    assert "metrics.jsonl: missing" in alerts[("curves", "backbone")]
    assert ("incomplete", "priors/half") in alerts
    assert any(key[0] == "stale" and "priors/diffusion" in text for key, text in alerts.items())
    figure = {(f["data-artifact"], f["data-file"]): text for f, text in page.figures if "data-file" in f}
    assert figure[("samples/diffusion", "grid.png")].startswith("not shown: grid.png: sha256 differs")
    assert not any(img["alt"] == "samples/diffusion/grid.png" for img in page.images)


def test_two_runs_side_by_side(tiny_run, tmp_path, monkeypatch):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    sample.run(SampleConfig(run=other, prior="gaussian", n=8, batch_size=8, temperature=0.5, device="cpu"), sample.RunControl(force=True))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", str(tiny_run), str(other)])
    assert result.exit_code == 0, result.output
    page = Page((tmp_path / "compare.html").read_text())  # several runs: ./compare.html by default
    configs = {cell_text(r, 0): r for r in page.table(data_section="configs", data_title="samples/gaussian")}
    assert [cell_text(configs["temperature"], i) for i in (1, 2)] == ["1", "0.5"]
    assert page.highlighted(data_section="configs", data_title="samples/gaussian") == {"temperature"}
    assert page.highlighted(data_section="configs", data_title="backbone") == set()
    fid_rows = {cell_text(r, 0): r for r in page.table(id="fid")}
    gauss = json.loads((tiny_run / "eval" / "fid-gaussian" / "result.json").read_text())["fid"]
    assert [cell_text(fid_rows[f"gaussian @ N = {N_FID}"], i) for i in (1, 2)] == [f"{gauss:.6g}"] * 2
    paired = [f for f, _ in page.figures if f.get("data-file") == "grid.png" and f.get("data-artifact") == "samples/gaussian"]
    assert len(paired) == 2
    assert CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")]).exit_code == 2


def test_ticks_and_thinning():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(-0.13, 0.02)[0] <= -0.13 and nice_ticks(-0.13, 0.02)[-1] >= 0.02
    xs, ys = thin(list(range(1000)), list(range(1000)), 50)
    assert len(xs) <= 50 and xs[0] == 0 and xs[-1] == 999
    chart = line_chart("loss", {"loss": ([0, 10, 20, 30], [1.0, float("nan"), 3.0, 2.0])}, markers=[(20, "rollback to 10")])
    (line,) = chart.lines
    assert line.n_points == 3 and line.last == 2.0  # the NaN is dropped
    ((x, label),) = chart.markers
    assert label == "rollback to 10" and x == pytest.approx(chart.left + 2 / 3 * (chart.right - chart.left))  # step 20 of 0..30
    assert line_chart("empty", {"loss": ([1], [float("inf")])}) is None


def chromium_screenshot(html: Path, png: Path, profile: Path) -> str:
    """Render `html` headless to `png`; returns Chromium's stderr (console messages are logged there)."""
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0",
               f"--screenshot={png}", "--window-size=1280,4000", html.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stderr


def console_messages(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (errors, failed loads, uncaught exceptions): `...:CONSOLE...] "message"`."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless browser test needs Debian's `chromium` on PATH (apt-get install "
    "chromium)")
def test_chromium_renders_the_page_without_console_messages(tiny_run, tmp_path):
    png = tmp_path / "report.png"
    messages = console_messages(chromium_screenshot(tiny_run / "report.html", png, tmp_path / "profile"))
    assert messages == []
    image = Image.open(png).convert("L")
    assert image.size == (1280, 4000) and image.getextrema()[0] < 100  # not a blank page
    # The check can fail: a page with a console error and an uncaught exception is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><p>x</p><script>console.error("boom"); no_such_function();</script></body></html>')
    messages = console_messages(chromium_screenshot(bad, tmp_path / "bad.png", tmp_path / "profile"))
    assert any("boom" in m for m in messages) and any("Uncaught ReferenceError" in m for m in messages)


def test_parents_outside_the_run_are_checked_and_missing_ones_named(tiny_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run / "samples" / "gaussian", partial / "samples" / "gaussian")  # its backbone stays in tiny_run
    manifest = json.loads((tiny_run / "samples" / "diffusion" / "manifest.json").read_text())
    for ref in manifest["inputs"]:
        ref["path"] = str(tmp_path / "gone" / ref["role"])  # parents that exist nowhere any more
        ref["sha256"] = "0" * 63 + "1"
    shutil.copytree(tiny_run / "samples" / "diffusion", partial / "samples" / "diffusion")
    (partial / "samples" / "diffusion" / "manifest.json").write_text(json.dumps(manifest))
    page = Page(report.run(ReportConfig(runs=(partial,))).read_text())
    rows = {cell_text(r, 0): r for r in page.table(id="artifacts")}
    outside = f"{tiny_run / 'backbone'} (outside the run)"
    assert cell_text(rows[outside], 2) == "intact" and cell_text(rows[outside], 3) == sha256(tiny_run / "backbone" / "manifest.json")
    missing = [text for a, text in page.alerts if a["data-problem"] == "missing-parent"]
    assert len(missing) == 1 and str(tmp_path / "gone") in missing[0] and "0" * 63 + "1" in missing[0]
    assert {text.split(":")[0] for a, text in page.alerts if a["data-problem"] == "absent"} >= {"not in this run"}
