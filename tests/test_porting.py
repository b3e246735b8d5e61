"""``bnspec diff``: the porting guide translates settings, measures what no setting removes, and
shows, for each, where both sides decide their knob (the profiles' citations)."""

from __future__ import annotations

import re
import subprocess
import sys

from bnspec.porting import Citation, _cite_lines, guide, porting_guide, render
from bnspec.profiles import get_profile
from bnspec.semantics import SETTABLE_KNOBS


def _flat(text: str) -> str:
    """The guide with its wrapping undone (a citation may span lines)."""
    return " ".join(text.split())


def test_every_setting_and_difference_carries_both_sides_citation_of_its_knobs():
    g = guide("pytorch", "keras")
    torch, keras = get_profile("pytorch"), get_profile("keras")
    momentum = next(s for s in g.settings if s.knob == "momentum")
    assert {(c.profile, c.knob) for c in momentum.cites} == {
        (p, k) for p in ("pytorch", "keras") for k in ("momentum", "momentum_weights")}
    assert Citation("keras", "momentum_weights", "running", keras.cite["momentum_weights"]) in momentum.cites
    assert [r.knob for r in g.residuals if r.knob in SETTABLE_KNOBS] == []
    for r in g.residuals:
        assert r.cites == (Citation("pytorch", r.knob, getattr(torch.semantics, r.knob), torch.cite[r.knob]),
                           Citation("keras", r.knob, getattr(keras.semantics, r.knob), keras.cite[r.knob]))


def test_the_printed_guide_shows_each_sides_citation_under_the_entry_it_supports():
    text = porting_guide("pytorch", "keras")
    torch, keras = get_profile("pytorch"), get_profile("keras")
    entry = re.split(r"\n  (?=\S)", text.split("  running_var_update: 'unbiased' -> 'biased'", 1)[1])[0]
    flat = _flat(entry)
    assert f"pytorch: {torch.cite['running_var_update']}" in flat
    assert f"keras: {keras.cite['running_var_update']}" in flat
    settings = _flat(text.split("Settings (what to pass):", 1)[1].split("state names:", 1)[0])
    assert f"keras: [momentum_weights] {keras.cite['momentum_weights']}" in settings
    assert f"pytorch: {torch.cite['eps']}" in settings


def test_citations_are_wrapped_to_a_readable_width_under_their_profile():
    long = Citation("pytorch", "eps", 1e-5, "a citation " * 30 + "path/to/a/very/long/file_name.py::Class.method" * 2)
    lines = _cite_lines((long, Citation("keras", "eps_floor", None, "short")), "eps")
    assert lines[0].startswith("      pytorch: a citation") and lines[-1] == "      keras:   [eps_floor] short"
    for line in lines[1:-1]:
        assert line.startswith(" " * 15) and (len(line) <= 100 or " " not in line.strip()), line


def test_a_guide_between_equal_profiles_has_no_residual_difference():
    g = guide("pytorch", "pytorch")
    assert g.residuals == ()
    assert "none: with the settings above the two agree exactly" in render(g)


def test_a_cumulative_average_cannot_be_matched_by_a_target_without_one():
    momentum = next(s for s in guide("pytorch_cumulative", "keras").settings if s.knob == "momentum")
    assert momentum.impossible == "the target has no cumulative average"


def test_diff_of_two_adapter_names_uses_their_declared_profiles():
    out = subprocess.run([sys.executable, "-m", "bnspec", "diff", "reference", "onnx"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Porting BatchNorm from pytorch (")
    assert _flat(get_profile("onnx").cite["running_var_update"]) in _flat(out.stdout)
