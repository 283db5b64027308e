"""Training schemes from the published multitask-BERT work: ensembles, EDA, SimCSE, LP-FT."""

from . import lpft
from .eda import EDA, SynonymSource, wordnet_synonyms
from .ensemble import EnsembleModel
from .simcse import simcse_loss, simcse_pretrain
from .smart import SmartRegularizer, symmetric_divergence

__all__ = [
    "EDA",
    "EnsembleModel",
    "SmartRegularizer",
    "lpft",
    "symmetric_divergence",
    "SynonymSource",
    "simcse_loss",
    "simcse_pretrain",
    "wordnet_synonyms",
]
