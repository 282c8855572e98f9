"""Kept for `from glp.flow import sample, project_on_manifold`, as printed in exported model cards: the code is
glp.prior.flow."""

from glp.prior.flow import euler_schedule, flow_matching_loss, interpolate, project_on_manifold, sample

__all__ = ["euler_schedule", "flow_matching_loss", "interpolate", "project_on_manifold", "sample"]
