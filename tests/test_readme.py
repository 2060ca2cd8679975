"""Figures the README and its docs pages state that the code can check: the paper's headline
results per config (docs/reproducing.md, "What to expect")."""
import glob
import os
import re

from dcac_config.generators.rendering import PAPER_CONFIG_DIR
from dcac_config.loading import build_config
from dcac_plugin.tools.experiments import load_paper_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
HEADLINE_PAGE = os.path.join(ROOT, "docs", "reproducing.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
ROW = re.compile(r"^\| Table (\d) \| [^|]+ \| `([\w/]+)` \| ([^|]+) \| ([^|]+) \|$")


def paper_number(rows, table, variant, sources, target):
    found = [r for r in rows if r["table"] == table and r["variant"] == variant and sorted(r["sources"]) == sorted(sources)
             and r["target"] == target]
    return f"{found[0]['mAP']:.1f} / {found[0]['rank1']:.1f}" if found else "–"


def test_headline_table_is_the_papers_numbers_for_each_shipped_config():
    rows = []
    for page in PAGES:  # the table lives in docs/reproducing.md, and no page holds another copy of its rows
        with open(page, encoding="utf-8") as handle:
            found = [row for row in (ROW.match(line.strip()) for line in handle) if row]
        assert page == HEADLINE_PAGE or not found, page
        rows += found
    assert len(rows) == 16  # 12 single-source pairs and 4 leave-one-out settings
    assert len({row.group(2) for row in rows}) == 16
    paper = load_paper_results()
    for row in rows:
        table, name, baseline, dcac = int(row.group(1)), row.group(2), row.group(3).strip(), row.group(4).strip()
        cfg = build_config(os.path.join(PAPER_CONFIG_DIR, name + ".yaml"))
        assert cfg.engine == "dcac"
        sources, (target,) = list(cfg.data.sources), list(cfg.data.targets)
        assert dcac == paper_number(paper, table, "dcac", sources, target), name
        assert baseline == paper_number(paper, table, "baseline", sources, target), name
