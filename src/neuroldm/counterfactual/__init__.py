"""Counterfactuals: a real volume as the run's models would draw it in another class (`make`), what each one
changed (`measures`), and the pipeline's stage over the held-out subjects (`cohort`)."""
