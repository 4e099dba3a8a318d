"""Experiment tools around the run path: the comparison runner with paired statistics
(``compare``, ``paired``), the tuner (``tune``), the speed benchmark (``benchmark``), the
frequency-against-cos(side, atom) analysis (``analysis``) and the results document
(``results_doc``, ``provenance``)."""
