"""The HTML run report: content, self-containment, odd runs, and a real browser rendering it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from fedhpc.errors import FedhpcError
from fedhpc.report.html import write_report
from fedhpc.report.metrics_log import MetricsLog

FACILITIES = ["polaris", "perlmutter", "frontier"]
T0 = 1_760_000_000.0
CONFIG = """\
name: chem-demo
model:
  source: tiny-llama
  peft: lora
algorithm:
  rounds: 3
  local_steps: 10
  min_facilities: 2
facilities:
  - name: polaris
    data: data/polaris.jsonl
  - name: perlmutter
    data: data/perlmutter.jsonl
  - name: frontier
    data: data/frontier.jsonl
"""


def eval_tasks(r: int) -> dict:
    """An `eval` event's `tasks` after round `r`: the formula task climbs past its baseline, logP never does."""
    def entry(primary: str, higher: bool, value: float, half: float, baseline: str, base: float) -> dict:
        return {"n": 100, "primary": primary, "higher_is_better": higher,
                "metrics": {primary: {"value": value, "ci95": [value - half, value + half]},
                            "invalid": {"value": 0.1, "ci95": [0.05, 0.16]}},
                "baseline": {"name": baseline,
                             "metrics": {primary: {"value": base, "ci95": [base - 0.02, base + 0.02]}}},
                "beats_baseline": (value - half > base + 0.02) if higher else (value + half < base - 0.02)}  # fmt: skip

    return {
        "formula": entry("exact_match", True, 0.05 + 0.1 * r, 0.05, "most frequent training answer", 0.03),
        "logp": entry("rmse", False, 2.4 - 0.1 * r, 0.3, "training mean (2.31)", 1.98),
    }


def write_run(
    run_dir: Path,
    *,
    rounds: int = 3,
    facilities: list[str] = FACILITIES,
    with_eval: bool = True,
    finished: bool = True,
) -> Path:
    """A realistic run: round 2's frontier update is rejected, round 3's perlmutter job fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiment.yaml").write_text(CONFIG)
    adapter = 8 * 1024**2 + 4096
    t = T0
    with MetricsLog(run_dir / "metrics.jsonl") as log:
        log.emit("run_started", ts=t, name="chem-demo", facilities=facilities, rounds=rounds, resumed_from=0)
        if with_eval:
            log.emit("eval", ts=t + 6, start=t, seconds=6.0, round=0, tasks=eval_tasks(0), lenient=False)
            t += 6
        for r in range(1, rounds + 1):
            round_start = t
            ends = []
            for i, f in enumerate(facilities):
                stage = 1.5 + 0.5 * i
                log.emit("staged", ts=t + stage, start=t, seconds=stage, round=r, facility=f, bytes=adapter)
                sub = t + stage
                log.emit("submitted", ts=sub, round=r, facility=f, job_id=f"{1000 * r + i}")
                queue, load, train = 3.0 + 4 * i, 4.0, 20.0 + 5 * i
                job = queue + load + train
                if r == 3 and f == "perlmutter":
                    log.emit("job_finished", ts=sub + 14, start=sub, seconds=14.0, round=r, facility=f,
                             state="timeout", returncode=137, reason="walltime exceeded")
                    ends.append(sub + 14)
                    continue
                log.emit("job_finished", ts=sub + job, start=sub, seconds=job, round=r, facility=f,
                         state="done", returncode=0, reason="")
                pull = 1.0 + 0.3 * i
                log.emit("pulled", ts=sub + job + pull, start=sub + job, seconds=pull, round=r, facility=f,
                         bytes=adapter)
                ends.append(sub + job + pull)
                if r == 2 and f == "frontier":
                    log.emit("rejected", ts=sub + job + pull + 0.2, round=r, facility=f, reason="non_finite",
                             message="tensor base_model.layers.1.q_proj.lora_A holds NaN <after step 7>")
                    continue
                base = 2.6 - 0.45 * (r - 1) + 0.1 * i
                loss = [round(base - 0.03 * k + 0.02 * ((k * 7 + i) % 3), 4) for k in range(10)]
                log.emit("accepted", ts=sub + job + pull + 0.2, round=r, facility=f, num_samples=400 + 100 * i,
                         local_steps=10, loss=loss, tokens=51200 + 1000 * i, train_seconds=train,
                         load_seconds=load)
            t = max(ends)
            log.emit("aggregated", ts=t + 2.5, start=t, seconds=2.5, round=r, num_updates=2, bytes=adapter)
            t += 2.5
            if with_eval:
                log.emit("eval", ts=t + 5, start=t, seconds=5.0, round=r, tasks=eval_tasks(r), lenient=False)
                t += 5
            log.emit("round_complete", ts=t, round=r, seconds=t - round_start, mean_loss_first=2.5,
                     mean_loss_last=2.2)
        if finished:
            log.emit("run_finished", ts=t + 0.1, rounds_completed=rounds, seconds=t + 0.1 - T0)
    return run_dir


SECTIONS = ["summary", "loss", "eval", "timeline", "data", "problems", "config"]


def assert_self_contained(html: str) -> None:
    lowered = html.lower()
    assert "<script" not in lowered
    assert "http://" not in lowered and "https://" not in lowered
    assert " src=" not in lowered and "@import" not in lowered and "@font-face" not in lowered
    assert all(ref.startswith("#") for ref in re.findall(r'href="([^"]*)"', html))
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", html))


def test_full_report_has_every_section_and_the_facts(tmp_path: Path) -> None:
    out = write_report(write_run(tmp_path / "run"))
    assert out == tmp_path / "run" / "report.html"
    html = out.read_text()
    assert_self_contained(html)
    for key in SECTIONS:
        assert f'<section id="{key}">' in html
    assert "<title>chem-demo" in html and "finished" in html
    for f in FACILITIES:
        assert f in html
    assert "3 / 3" in html and ">7</div>" in html  # rounds completed / planned, accepted updates
    assert "non_finite" in html and "walltime exceeded" in html and "job timeout" in html
    assert "&lt;after step 7&gt;" in html  # messages are escaped
    assert "exact_match" in html and "rmse" in html and "(base)" in html
    assert "min_facilities: 2" in html  # the config block
    assert html.count("<svg") >= 6  # 2 loss + 2 eval + timeline + bytes
    assert "LENIENT" not in html


def evaluation_section(html: str) -> str:
    return html.split('<section id="eval">')[1].split("</section>")[0]


def test_evaluation_shows_each_score_beside_its_baseline_interval_and_n(tmp_path: Path) -> None:
    section = evaluation_section(write_report(write_run(tmp_path / "run")).read_text())
    verdicts = section.split("</table>")[0]
    rows = {row.split("</td>")[0].split(">")[-1]: row for row in verdicts.split("<tr>")[2:]}
    formula, logp = rows["formula"], rows["logp"]
    # round 3: formula 0.35 [0.3, 0.4] beats the baseline's [0.01, 0.05]; logP 2.1 [1.8, 2.4] vs [1.96, 2.0] does not
    for cell in ("0.35", "[0.3, 0.4]", "100", "most frequent training answer", "0.03", "[0.01, 0.05]", ">yes<"):
        assert cell in formula, cell
    for cell in ("2.1", "[1.8, 2.4]", "training mean (2.31)", "1.98", "[1.96, 2]", ">no<"):
        assert cell in logp, cell
    assert "exact_match ↑" in formula and "rmse ↓" in logp
    assert ">0.05<" in formula  # the base model's score (round 0) beside the last round's
    assert section.count("stroke-dasharray") >= 2  # each chart draws its baseline dashed


def test_lenient_rounds_are_labelled(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=1)
    with MetricsLog(run / "metrics.jsonl") as log:
        log.emit("eval", round=2, tasks=eval_tasks(2), lenient=True)
    section = evaluation_section(write_report(run).read_text())
    assert "LENIENT extraction (not LlaSMol's)" in section.replace("&#x27;", "'") and "round(s) 2" in section


def test_a_run_logged_before_baselines_still_shows_its_scores(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl") as log:
        log.emit("run_started", name="old", facilities=["a"], rounds=1, resumed_from=0)
        log.emit("eval", round=0, scores={"formula": {"exact_match": 0.05, "n": 24}})
        log.emit("eval", round=1, scores={"formula": {"exact_match": 0.25, "n": 24}})
    section = evaluation_section(write_report(run).read_text())
    assert "exact_match" in section and "0.25" in section and "baseline" not in section


def test_report_to_another_path(tmp_path: Path) -> None:
    out = write_report(write_run(tmp_path / "run"), tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and not (tmp_path / "run" / "report.html").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rounds": 1},
        {"rounds": 1, "with_eval": False},
        {"with_eval": False, "finished": False},
        {"rounds": 1, "facilities": ["solo"]},
    ],
)
def test_small_and_partial_runs(tmp_path: Path, kwargs: dict) -> None:
    html = write_report(write_run(tmp_path / "run", **kwargs)).read_text()
    assert_self_contained(html)
    if not kwargs.get("with_eval", True):
        assert "No evaluation events" in html
    if not kwargs.get("finished", True):
        assert "incomplete" in html


def test_run_where_every_job_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl") as log:
        log.emit("run_started", name="doomed", facilities=["a", "b"], rounds=2, resumed_from=0)
        for f in ("a", "b"):
            log.emit("staged", round=1, facility=f, bytes=10, seconds=0.1, start=T0)
            log.emit("job_finished", round=1, facility=f, state="failed", returncode=1, seconds=2.0,
                     start=T0 + 1, reason="worker exited with code 1")
    html = write_report(run).read_text()
    assert "No accepted updates yet" in html and "No experiment.yaml" in html
    assert html.count("worker exited with code 1") == 2


def test_fresh_run_and_torn_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert "unnamed run" in write_report(run).read_text()
    (run / "metrics.jsonl").write_text('{"ts": 1, "event": "run_started", "name": "x", "rounds": 2}\n{"ts": 2, "ev')
    assert "<h1>x</h1>" in write_report(run).read_text()


def test_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FedhpcError, match="metrics.jsonl does not exist"):
        write_report(tmp_path)


# -- a real browser --------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail("CI is set but no chromium is installed: apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium); under CI=true this fails instead")


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and decompressed scanlines of a PNG, with the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return width, height, zlib.decompress(b"".join(chunks))


def test_chromium_renders_the_report(tmp_path: Path) -> None:
    chromium = _chromium()
    report = write_report(write_run(tmp_path / "run"))
    html = report.read_text()
    # The report has no JavaScript at all, so there is nothing to raise a console
    # error; that is the property asserted, and the browser log is checked too.
    assert "<script" not in html.lower() and not re.search(r"<[^>]*\son[a-z]+=", html)
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
    ]
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [chromium, *flags, f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={png}",
         "--window-size=1280,2400", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert png.is_file(), f"no screenshot; chromium said:\n{shot.stderr[-3000:]}"
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line]
    assert not console, "browser console output:\n" + "\n".join(console)
    width, height, pixels = _png_pixels(png)
    assert (width, height) == (1280, 2400)
    assert png.stat().st_size > 30_000 and len(set(pixels)) > 64  # a page, not a blank canvas

    dom = subprocess.run(
        [chromium, *flags, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-3000:]
    for key in SECTIONS:
        assert f'<section id="{key}">' in dom.stdout
    assert dom.stdout.count("<svg") == html.count("<svg")
    if os.environ.get("FEDHPC_REPORT_SCREENSHOT"):
        shutil.copy(png, os.environ["FEDHPC_REPORT_SCREENSHOT"])
