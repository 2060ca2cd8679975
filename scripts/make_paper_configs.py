"""Regenerate dcac_config/configs/paper/ (the paper's protocols and ablations) from dcac_config.generators.paper."""
from dcac_config.generators.paper import write_paper_configs

if __name__ == "__main__":
    paths = write_paper_configs()
    print(f"wrote {len(paths)} files")
