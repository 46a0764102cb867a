"""Render report.html in headless Chromium (Debian package ``chromium``): no console or page error,
no network request, every figure drawn.

A small probe script is inserted into a copy of the page: it records errors and console.error
calls, and after load writes the state of each figure into the DOM, which ``--dump-dom`` returns.
All host names resolve to nothing, so a page that needed the network would log a failed load.
"""

import html
import json
import re
import shutil
import subprocess
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="install Debian chromium (apt-get install chromium)")

PROBE = """<script>
window.__maxactErrors = [];
window.addEventListener('error', function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.href)) || 'resource failed to load';
  window.__maxactErrors.push('error: ' + what);
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__maxactErrors.push('rejection: ' + e.reason); });
(function () {
  var orig = console.error;
  console.error = function () {
    window.__maxactErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return orig.apply(console, arguments);
  };
})();
window.addEventListener('load', function () {
  setTimeout(function () {
    var figs = [];
    document.querySelectorAll('figure.maxact-figure').forEach(function (f) {
      var plot = f.querySelector('.js-plotly-plot');
      figs.push({name: f.dataset.figure, plotted: !!plot,
                 svgs: plot ? plot.querySelectorAll('svg.main-svg').length : 0,
                 marks: plot ? plot.querySelectorAll('.point, .bars path, .heatmaplayer image, .js-line').length : 0});
    });
    var pre = document.createElement('pre');
    pre.id = 'maxact-probe';
    pre.textContent = JSON.stringify({errors: window.__maxactErrors, figures: figs,
                                      hasPlotly: typeof window.Plotly === 'object'});
    document.body.appendChild(pre);
  }, 1000);
});
</script>"""


def render(page_path):
    """(probe result, chromium stderr) for a page rendered headless with the network cut off."""
    profile = tempfile.mkdtemp(prefix="maxact-chromium-")
    try:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--virtual-time-budget=20000", "--window-size=1400,1000", "--dump-dom", page_path.as_uri()],
            capture_output=True, text=True, timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="maxact-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe did not run; chromium rc={proc.returncode}\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(m.group(1))), proc.stderr


def test_report_renders_without_errors(built_report, tmp_path):
    out, summary = built_report
    page = (out / "report.html").read_text()
    probed = tmp_path / "report_probe.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1))
    result, stderr = render(probed)
    console = [ln for ln in stderr.splitlines() if "CONSOLE" in ln and re.search(r"Uncaught|Error", ln)]
    assert result["errors"] == [] and console == [], (result["errors"], console)
    assert result["hasPlotly"]
    drawn = {f["name"]: f for f in result["figures"]}
    assert set(drawn) == set(summary["figures"])  # every figure with data is on the page
    for name, f in drawn.items():
        assert f["plotted"] and f["svgs"] > 0 and f["marks"] > 0, (name, f)


def test_probe_catches_a_broken_page(tmp_path):
    """The check itself fails on a script error and on a figure that never draws."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><head></head><body><figure class='maxact-figure' data-figure='x'><div></div></figure>"
                   "<script>undefinedFunction();</script></body></html>".replace("<head>", "<head>" + PROBE, 1))
    result, _ = render(bad)
    assert any("undefinedFunction" in e for e in result["errors"])
    assert result["figures"] == [{"name": "x", "plotted": False, "svgs": 0, "marks": 0}]
