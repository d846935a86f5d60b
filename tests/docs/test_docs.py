"""The documented interface is the real one: every config key in the reference, and every SPEC column written
in the SPEC's order."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from helpers.runs import ROOT
from omegaconf import DictConfig

from fedsim.collections.ledger import RUNS_COLUMNS
from fedsim.collections.summary import SUMMARY_COLUMNS
from fedsim.config.compose import CONF_DIR, compose
from fedsim.outputs.columns import CLIENTS_COLUMNS, LAYER_COLUMNS, MANIFEST_COLUMNS, ROUNDS_COLUMNS

SPEC = ROOT.parent / "shared" / "SPEC.md"
REFERENCE = ROOT / "docs" / "reference" / "configuration.md"


def leaf_keys(node: DictConfig, prefix: str) -> list[str]:
    out = []
    for key in node.keys():
        child, dotted = node._get_node(key), f"{prefix}.{key}" if prefix else str(key)
        if str(key).startswith("_"):
            continue
        if isinstance(child, DictConfig) and len(child) and key != "tags":
            out += leaf_keys(child, dotted)
        else:
            out.append(dotted)
    return out


def test_every_key_of_every_option_is_in_the_configuration_reference():
    text = REFERENCE.read_text()
    documented = set(re.findall(r"`([A-Za-z_][\w.]*)`", text))
    missing = []
    for group in sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir()):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        table = text[text.index("## Every key, by group") :]
        row = next((line for line in table.splitlines() if line.startswith(f"| `{group}` |")), "")
        missing += [f"{group}={o}" for o in options if o not in row.split("|")[2]] if row else [f"group {group}"]
        if group == "experiment":
            continue
        for option in options:
            missing += [k for k in leaf_keys(compose([f"{group}={option}"])[group], group) if k not in documented]
    missing += [
        k
        for k in leaf_keys(compose([]), "")
        if k.split(".")[0] not in {d.name for d in CONF_DIR.iterdir()} and k not in documented
    ]
    assert not sorted(set(missing)), f"keys or options of conf/ missing from {REFERENCE.name}: {sorted(set(missing))}"


def spec_columns(file: str) -> list[str]:
    """The columns the SPEC's table lists for `file`, in order."""
    row = next(line for line in SPEC.read_text().splitlines() if line.startswith(f"| `{file}`"))
    cell = row.split("|")[3]
    cell = cell.split(";")[0]  # "...; epsilon under `privacy`" and "then status ..." name later columns
    return [c.strip().strip("`") for c in cell.split(",") if c.strip() and " " not in c.strip()]


@pytest.mark.skipif(not SPEC.exists(), reason="../shared/SPEC.md is not beside this checkout")
@pytest.mark.parametrize(
    "file, columns",
    [
        ("rounds.csv", ROUNDS_COLUMNS),
        ("clients.csv", CLIENTS_COLUMNS),
        ("layers.csv", LAYER_COLUMNS),
        ("runs.csv", RUNS_COLUMNS),
    ],
)
def test_the_spec_columns_come_first_and_in_its_order(file, columns):
    spec = spec_columns(file)
    assert len(spec) >= 8 and columns[: len(spec)] == spec, (file, spec)


@pytest.mark.skipif(not SPEC.exists(), reason="../shared/SPEC.md is not beside this checkout")
def test_the_spec_names_every_later_column_too():
    """Columns after the SPEC's ordered ones: the SPEC names them (epsilon, status, error, node) or the docs do."""
    text = SPEC.read_text()
    docs = "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    for columns in (ROUNDS_COLUMNS, CLIENTS_COLUMNS, SUMMARY_COLUMNS, MANIFEST_COLUMNS):
        for column in columns:
            assert column in text or column in docs, column


def test_every_readme_section_the_code_and_docs_point_to_exists():
    """`README's "X"` and `README, "X"` in code, config and docs name one of README.md's headings."""
    headings = set(re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(), flags=re.M))
    pointers = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*.toml"), *ROOT.glob("fedsim/**/*.py"), *ROOT.glob("conf/**/*.yaml")]:
        pointers += [(path.name, name) for name in re.findall(r'README(?:\'s|,) "([^"]+)"', path.read_text())]
    for path in [*ROOT.glob("docs/**/*.md"), *ROOT.glob("results/*.md")]:
        pointers += [(path.name, name) for name in re.findall(r'README(?:\'s|,) "([^"]+)"', path.read_text())]
    assert [(where, name) for where, name in pointers if name not in headings] == []


USER_PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]  # the benchmarks and changelog among them
# A commit as a reader would meet it: 7 to 40 hex digits standing alone, with at least one digit and one letter
# (so "2026", "decade" and "1e-6" are not commits, and "0830fb4" is).
COMMIT = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
ISSUE = re.compile(r"\bissues? #?\d+|(?<![\w&])#\d+\b", re.IGNORECASE)


def rendered_source(page: Path) -> str:
    """The page's Markdown with its `--8<--` snippets inlined, as mkdocs renders it: scripts.md is
    bench/README.md, so a hash there is on the page too."""
    text = page.read_text()
    for line, target in re.findall(r'^(--8<-- "([^"]+)")$', text, flags=re.M):
        path, _, start = target.partition(":")
        lines = (ROOT / path).read_text().splitlines(keepends=True)
        text = text.replace(line, "".join(lines[int(start or 1) - 1 :]))
    return text


def history_references(text: str) -> list[str]:
    return COMMIT.findall(text) + ISSUE.findall(text)


def test_the_reference_finder_finds_commits_and_issues_and_nothing_else():
    """The pattern below must be able to fail: it finds what the lab log used to hold, and passes dates and numbers."""
    assert history_references("Measured at commit 0830fb4, before (issue 36, item 1); see #47.") == [
        "0830fb4",
        "issue 36",
        "#47",
    ]
    assert history_references("2026-12-05: 0.98 (0.97-0.99), 1.05e-06, 2^16 buckets, a decade, 4,247 MB") == []


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_user_facing_page_names_a_commit_or_an_issue(page):
    """These pages are for users: a figure carries its date and machine, a change its date, not the commit or issue
    it came from."""
    assert history_references(rendered_source(page)) == []


def load_figures():
    """bench/figures.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_plotting_script_draws_every_plot_the_page_shows_from_the_data_file(tmp_path):
    figures = load_figures()
    drawn = figures.draw(figures.DATA, tmp_path)
    page = (ROOT / "docs" / "benchmarks" / "measured.md").read_text()
    shown = set(re.findall(r"\(\.\./img/(bench-[\w-]+\.png)\)", page))
    assert len(shown) >= 3 and {p.name for p in drawn} == shown
    for path in drawn:
        assert path.parent == tmp_path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert (ROOT / "docs" / "img" / path.name).exists(), f"docs/img/{path.name} not checked in"
    # The plots follow the data file: a file with one figure draws one plot, and no more.
    one = tmp_path / "one.csv"
    rows = (ROOT / "bench" / "figures.csv").read_text().splitlines()
    one.write_text("\n".join([rows[0], *(r for r in rows if r.startswith("collection,"))]) + "\n")
    assert [p.name for p in figures.draw(one, tmp_path / "one")] == ["bench-collection.png"]


def test_every_figure_in_the_data_file_is_on_the_page_with_its_date_and_command():
    """The data file and the page's tables hold the same numbers: a figure changed in one and not the other fails."""
    figures = load_figures()
    page = (ROOT / "docs" / "benchmarks" / "measured.md").read_text()
    flat = " ".join(page.split())
    for row in figures.read():
        assert re.search(rf"(?<![\d.]){re.escape(row.value)}(?![\d])", page), (row.item, row.measure, row.value)
        assert row.date in page and " ".join(row.command.split()) in flat, (row.item, row.command)
