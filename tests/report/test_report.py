import base64
import json
import re
import shutil

import pytest

from neuroldm.cli import main
from neuroldm.metrics.interval import Interval
from neuroldm.report import write_report
from neuroldm.report.sections import SECTIONS, fmt

from report_run import CF_SSIM, CF_VALIDITY, ENRICHMENT, RECON

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TITLES = [title for _, title, _, _ in SECTIONS]


@pytest.fixture(scope="module")
def page(fake_run):
    run, facts = fake_run
    path = write_report(run)
    return path.read_text(encoding="utf-8"), facts


def _copy(fake_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run[0], run)
    return run


def test_the_page_is_written_beside_the_run_with_every_section(fake_run, page):
    html, _ = page
    assert (fake_run[0] / "report.html").exists()
    for title in ["Summary", "Real vs synthetic", "Autoencoder", "Diffusion model", "Generative evaluation",
                  "Classifier", "Saliency", "Counterfactuals", "Configuration and software"]:
        assert f"<h2>{title}</h2>" in html
    assert "Not run" not in html  # every stage of the fake run has its outputs


def test_every_image_is_an_embedded_png(page):
    html, _ = page
    sources = re.findall(r'src="([^"]*)"', html)
    # real vs synthetic, reconstruction, 3 training curves, 3 slice FID + closest pairs, 2 x (2 means + 2 subjects),
    # 2 counterfactuals
    assert len(sources) == 1 + 1 + 3 + 4 + 8 + 2
    assert len(sources) == html.count("<img ")
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched


def test_key_numbers_appear_with_their_n_and_ci(page):
    html, facts = page
    assert "0.812" in html and "41.7" in html and "18.4" in html and "5,321" in html
    assert "[0.611, 0.902]" in html  # classifier.real.auc.low / .high merged into one row with its N
    assert re.search(r"<td>classifier\.real\.auc</td><td[^>]*>0\.779</td><td[^>]*>\[0\.611, 0\.902\]</td>"
                     r"<td[^>]*>24</td>", html)
    assert fmt(RECON["psnr"]) in html and "27.5" in html
    assert f"{fmt(ENRICHMENT.value)}x [{fmt(ENRICHMENT.low)}, {fmt(ENRICHMENT.high)}] (N=6)" in html
    pooled = next(r for r in facts.grid["pooled"] if r["regime"] == "synthetic")
    assert f"{pooled['p_vs_real']:.3g}" in html and fmt(pooled["auc"]) in html
    overall = facts.groups["overall"]["synthetic"]["fid_random_features"]
    assert fmt(overall["mean"]) in html and fmt(overall["fid_2_5d"]) in html
    test = facts.result["test"]
    assert f"N={test['n']} ({test['n_pos']} positive)" in html
    assert "3,456" in html and "3,457" in html  # a stage's seconds and the total of the finished ones
    assert re.search(r"<td>saliency</td><td[^>]*>running</td><td[^>]*>failed</td>", html)
    # counted from the run's list: the model file holds only the list's sha256
    assert re.search(r"<td>training subjects</td><td[^>]*>4</td>", html)
    # per stage: seconds per optimiser step and peak memory (pipeline.json), a process-wide peak said as such
    assert re.search(r"<td>train-vae</td>(<td[^>]*>[^<]*</td>){3}<td[^>]*>0.412</td>"
                     r"<td[^>]*>3.254 GB RSS, 11.5 GB CUDA</td>", html)
    assert re.search(r"<td>prepare</td>(<td[^>]*>[^<]*</td>){3}<td[^>]*>–</td><td[^>]*>0.812 GB RSS \(process "
                     r"peak\)</td>", html)
    assert "91.7% [74.2%, 97.7%] (N=24)" in html and CF_VALIDITY.value == 0.9167  # a share, in percent
    assert f"{fmt(CF_SSIM.value)} [{fmt(CF_SSIM.low)}, {fmt(CF_SSIM.high)}]" in html
    assert "<td>strength 0.5</td>" in html and "<td>HC → TLE</td>" in html


def test_class_difference_agreement_is_tabulated(fake_run, page):
    html, _ = page
    ev = json.loads((fake_run[0] / "evaluation" / "metrics.json").read_text())
    c = ev["class_difference"]["contrasts"]["TLE-HC"]
    corr_heldout = Interval.from_dict(c["corr_heldout"])
    ci = ", ".join(fmt(v) for v in (corr_heldout.low, corr_heldout.high))
    assert re.search(rf"<td>TLE-HC</td><td[^>]*>{re.escape(fmt(c['corr_training']))}</td>"
                     rf"<td[^>]*>{re.escape(fmt(corr_heldout.value))} \[{re.escape(ci)}\]</td>", html)
    assert "4 / 4 / 4" in html  # N of training / held-out / synthetic volumes


def test_a_missing_stage_gets_a_note_and_the_rest_still_renders(fake_run, tmp_path):
    run = _copy(fake_run, tmp_path)
    shutil.rmtree(run / "evaluation")
    (run / "pipeline.json").unlink()
    html = write_report(run).read_text()
    assert "Not run: no evaluation/metrics.json" in html
    assert "Not run: no pipeline.json" in html
    assert "<h2>Generative evaluation</h2>" in html and "0.812" in html


def test_an_empty_run_directory_gives_every_section_a_note(tmp_path):
    html = write_report(tmp_path, tmp_path / "out" / "page.html").read_text()
    for title in TITLES:
        assert f"<h2>{title}</h2>" in html
    assert html.count("Not run:") >= 9
    assert "<img " not in html


def test_a_damaged_file_is_named_not_raised(fake_run, tmp_path):
    run = _copy(fake_run, tmp_path)
    (run / "saliency" / "summary.json").write_text("{not json")
    (run / "evaluation" / "slice_fid_HC.png").write_bytes(b"GIF89a")
    html = write_report(run).read_text()
    assert "Could not be read" in html
    assert "slice_fid_HC.png is not a PNG image" in html


def test_cli_writes_the_report(fake_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(fake_run[0]), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert str(out) in capsys.readouterr().out


def test_cli_missing_run_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"neuroldm report: error: {tmp_path / 'nope'}: run directory not found"
