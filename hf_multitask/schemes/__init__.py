"""Training schemes from the published multitask-BERT work: LP-FT, head pretraining, two-step
specialisation, SMART, SimCSE, EDA and ensembles."""

from . import lpft
from .eda import EDA, SynonymSource, wordnet_synonyms
from .ensemble import EnsembleModel
from .simcse import simcse_loss, simcse_pretrain
from .smart import SmartRegularizer, symmetric_divergence
from .specialise import Specialisation, better_experts, pretrain_heads, route, specialise, specialise_experts

__all__ = [
    "EDA",
    "EnsembleModel",
    "SmartRegularizer",
    "Specialisation",
    "SynonymSource",
    "better_experts",
    "lpft",
    "pretrain_heads",
    "route",
    "simcse_loss",
    "simcse_pretrain",
    "specialise",
    "specialise_experts",
    "symmetric_divergence",
    "wordnet_synonyms",
]
