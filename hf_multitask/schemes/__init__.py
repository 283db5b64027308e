"""Training schemes from the published multitask-BERT work: LP-FT, head pretraining, two-step
specialisation, SMART, SimCSE, EDA and ensembles."""

from . import lpft
from .eda import EDA, SynonymSource, wordnet_synonyms
from .ensemble import EnsembleModel
from .simcse import simcse_loss, simcse_pretrain
from .smart import SmartRegularizer, symmetric_divergence
from .specialise import pretrain_heads, route, specialise

__all__ = [
    "EDA",
    "EnsembleModel",
    "SmartRegularizer",
    "SynonymSource",
    "lpft",
    "pretrain_heads",
    "route",
    "simcse_loss",
    "simcse_pretrain",
    "specialise",
    "symmetric_divergence",
    "wordnet_synonyms",
]
