"""Resampling schemes of :class:`~samplers.SMC`: the functions of :mod:`ebmcompose.resampling`
(systematic, stratified, multinomial, ``resample``, ``ess``), one implementation shared with the
global resampling of ``ec.distributed``."""

from ebmcompose.resampling import SCHEMES, ess, multinomial, normalise, resample, stratified, systematic

__all__ = ["SCHEMES", "systematic", "stratified", "multinomial", "resample", "ess", "normalise"]
