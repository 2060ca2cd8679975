"""Figures the README states that the code can check: the paper's headline results per config."""
import os
import re

from dcac_config.generators.rendering import PAPER_CONFIG_DIR
from dcac_config.loading import build_config
from dcac_plugin.tools.experiments import load_paper_results

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
ROW = re.compile(r"^\| Table (\d) \| [^|]+ \| `([\w/]+)` \| ([^|]+) \| ([^|]+) \|$")


def paper_number(rows, table, variant, sources, target):
    found = [r for r in rows if r["table"] == table and r["variant"] == variant and sorted(r["sources"]) == sorted(sources)
             and r["target"] == target]
    return f"{found[0]['mAP']:.1f} / {found[0]['rank1']:.1f}" if found else "–"


def test_headline_table_is_the_papers_numbers_for_each_shipped_config():
    with open(README, encoding="utf-8") as handle:
        rows = [ROW.match(line.strip()) for line in handle]
    rows = [row for row in rows if row]
    assert len(rows) == 16  # 12 single-source pairs and 4 leave-one-out settings
    paper = load_paper_results()
    for row in rows:
        table, name, baseline, dcac = int(row.group(1)), row.group(2), row.group(3).strip(), row.group(4).strip()
        cfg = build_config(os.path.join(PAPER_CONFIG_DIR, name + ".yaml"))
        assert cfg.engine == "dcac"
        sources, (target,) = list(cfg.data.sources), list(cfg.data.targets)
        assert dcac == paper_number(paper, table, "dcac", sources, target), name
        assert baseline == paper_number(paper, table, "baseline", sources, target), name
