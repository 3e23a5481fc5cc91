"""Kept for old imports: the MTEB wrapper lives in :mod:`moee_plugins.evaluation.mteb`."""

from .evaluation.mteb import PAPER_CITATION, MoEEMTEBModel, config_revision, model_name

__all__ = ["PAPER_CITATION", "MoEEMTEBModel", "config_revision", "model_name"]
