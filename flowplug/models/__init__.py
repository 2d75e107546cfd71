"""Whole models with one interface (:class:`flowplug.models.base.FlowModel`): MRCNF and the baselines."""
