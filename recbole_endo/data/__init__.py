"""Datasets in RecBole's atomic files: the Coat converter (``coat``), the endo-synth generator
with known ground truth (``synth``) and cold-start splits (``cold_start``); and what training and
evaluation read off a split's interactions alike (``interactions``), and the datasets a run
writes before loading them (``preparers``)."""
