"""Super-Resolution via Conditional IMLE (SRIM, Li, Peng, Malik 2018): vgg19.py (Flax VGG19 and weight loaders),
features.py (the feature map and distances), models.py (the two-stage network, sampling), imle.py (noises and the
exact hierarchical search), train.py (training, evaluation, restoring for sampling), evaluate.py (table 1 and
figures 4-6 against bicubic and SRGAN), srgan.py (SRGAN, Ledig et al. 2017: SRIM's comparison baseline)."""
