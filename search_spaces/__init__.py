"""Search spaces: building blocks, network families and the spaces over them."""

from . import extremec3 as _extremec3  # noqa: E402,F401
from . import sinet as _sinet  # noqa: E402,F401  (registers the family and its named points)
from .genotype import (
    BranchSpec,
    C3Genotype,
    C3ModuleSpec,
    C3Stage,
    GateWarning,
    Genotype,
    S2ModuleSpec,
    SINetGenotype,
    SINetStage,
    genotype_from_dict,
    load_genotype,
)
from .registry import create_model, get_genotype, list_models, model_info, register_family, register_model

__all__ = [
    "BranchSpec",
    "C3Genotype",
    "C3ModuleSpec",
    "C3Stage",
    "GateWarning",
    "Genotype",
    "S2ModuleSpec",
    "SINetGenotype",
    "SINetStage",
    "create_model",
    "genotype_from_dict",
    "get_genotype",
    "list_models",
    "load_genotype",
    "model_info",
    "register_family",
    "register_model",
]
