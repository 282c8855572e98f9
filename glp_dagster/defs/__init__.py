"""The assets and checks of each asset group, one module per `glp.pipeline` module: data, prior, probing, steering,
ood, scaling."""
