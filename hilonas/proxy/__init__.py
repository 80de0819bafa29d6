"""Accuracy proxies: datasets (the embedded default, user folders, CIFAR), the short training that scores an
architecture, zero-cost scores, and trained weights on disk.

Import from the submodules (``hilonas.proxy.data``, ``.train``, ``.zero_cost``, ``.checkpoint``); this package
imports nothing heavy itself.
"""

__all__ = ["REFERENCE_FACTOR", "LEGACY_REFERENCE_FACTOR", "PROXIES", "DEFAULT_PROXY", "PROXY_INFO", "LEGACY_PROXY",
           "ZC_BATCH", "check_proxy", "proxy_kind"]

# The reference budget (``hilonas.proxy.train.ProxyBudget.scaled``) trains on this many times the proxy's images.
# 30, not 10: on the embedded cluttered digits 10x (390 steps, 35-45% held-out) is still in the noisy early part of
# training, where two seeds of one network differ by 1.2 points (standard deviation) against 1.4 points between 8
# networks (seed-vs-seed Spearman 0.41); at 30x (1,170 steps, 55-59%) the seeds differ by 0.7 against 1.5
# (Spearman 0.89). README, "Proxy training".
REFERENCE_FACTOR = 30.0
# Studies started before the factor was recorded were promoted at this one (search.promote.reference_budget).
LEGACY_REFERENCE_FACTOR = 10.0

# What a search's trials are scored by (``hilonas search --proxy``): ``naswot``, the zero-cost score of the untrained
# network (hilonas.proxy.zero_cost.naswot, 0.03-0.15 s), or ``train``, the short training (hilonas.proxy.train, 5-11 s).
# NASWOT by default: against the 30x reference on ten bench seeds (5-14) it ranked at Spearman 0.45-0.93 (mean
# 0.77) where the short training reached -0.20-0.54 (mean 0.20), each training run repeatable but biased toward
# networks that learn fast (README, "Proxy training"). Either way promotion trains the front for real accuracy.
PROXIES = ("naswot", "train")
DEFAULT_PROXY = "naswot"
# Per proxy, one place: ``metric``, the study's first objective as Optuna names it (its dashboard, metric_names);
# ``bench``, the entry of ``hilonas bench proxy`` that measures the same score; ``meaning``, what ``results`` says
# the score is.
PROXY_INFO = {
    "naswot": {"metric": "naswot_score", "bench": "naswot",
               "meaning": "NASWOT of the untrained network (higher ranks higher; not an accuracy)"},
    "train": {"metric": "accuracy", "bench": "default", "meaning": "held-out top-1 of the short training"},
}
# Studies started before the proxy was recorded were scored by the short training.
LEGACY_PROXY = "train"
# Images of the task's training set NASWOT's kernel is computed on (the first ones: a fixed batch per dataset).
ZC_BATCH = 64


def check_proxy(kind: object) -> str:
    """``kind`` when it names a proxy of :data:`PROXIES`; a HilonasError naming ``--proxy`` otherwise."""
    from hilonas.errors import HilonasError

    if kind not in PROXIES:
        raise HilonasError(f"--proxy={kind!r} is unknown: use {' or '.join(PROXIES)} (naswot: the zero-cost score of "
                         "the untrained network, the default; train: the short training)")
    return str(kind)


def proxy_kind(settings: dict) -> str:
    """The proxy a study's stored settings say its trials were scored by (:data:`LEGACY_PROXY` when unrecorded)."""
    return str(settings.get("proxy") or LEGACY_PROXY)
