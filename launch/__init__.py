"""Entry points (train, evaluate, sample, corners, study) and what sits above both methods: the table from
`config.method` to its module (methods.py) and the study's build step (study_build.py)."""
