"""The documented interface is the real one: every config key in the reference, and every SPEC column written
in the SPEC's order."""

from __future__ import annotations

import re

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
