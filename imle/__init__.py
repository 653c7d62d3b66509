"""Super-Resolution via Conditional IMLE (SRIM, Li, Peng, Malik 2018): vgg19.py (Flax VGG19 and weight loaders),
features.py (the feature map and distances), models.py (the two-stage network, sampling), imle.py (noises and the
exact hierarchical search), train.py (training, evaluation, restoring for sampling)."""
