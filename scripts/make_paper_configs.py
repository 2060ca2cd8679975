"""Regenerate dcac_plugin/configs/paper/ (the paper's protocols and ablations) from dcac_plugin.paper_configs."""
from dcac_plugin.paper_configs import write_paper_configs

if __name__ == "__main__":
    paths = write_paper_configs()
    print(f"wrote {len(paths)} files")
